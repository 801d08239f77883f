"""Which engine runs a model on this hardware, with how many GPUs, and why.

The estimate is deliberately simple and printed with every plan: weights = parameters × bytes per
parameter (from dtype or quantization), plus a KV-cache reserve. `engine.kind=auto` then picks
  - `cpu`: vLLM's CPU build, when there is no GPU;
  - `vllm`: the lightweight engine, one GPU, when weights + reserve fit one GPU with headroom;
  - `distributed`: vLLM tensor parallel over the fewest GPUs of one node that fit (a power of two,
    as attention heads divide by it), and pipeline parallel across nodes when one node is not enough.
Every threshold lives in `engine.selection` (conf/engine/auto.yaml).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from runner.machine.hardware import GPU, GiB, Hardware, SelectionError

if TYPE_CHECKING:
    from runner.config.schema import EngineConfig, ModelConfig, SelectionConfig

KINDS = ("auto", "vllm", "distributed", "cpu", "hf")

# Bytes per parameter of the stored weights.
_DTYPE_BYTES = {"float32": 4.0, "float": 4.0, "float16": 2.0, "half": 2.0, "bfloat16": 2.0, "auto": 2.0}
_QUANT_BYTES = {"awq": 0.5, "gptq": 0.5, "awq_marlin": 0.5, "gptq_marlin": 0.5, "bitsandbytes": 0.5, "fp8": 1.0}


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: float
    kv_reserve_bytes: float
    bytes_per_param: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_reserve_bytes

    def as_dict(self) -> dict[str, float]:
        return {
            "bytes_per_param": self.bytes_per_param,
            "weights_gib": round(self.weights_bytes / GiB, 2),
            "kv_reserve_gib": round(self.kv_reserve_bytes / GiB, 2),
            "total_gib": round(self.total_bytes / GiB, 2),
        }


@dataclass(frozen=True)
class Selection:
    kind: str  # vllm | distributed | cpu | hf | server (a running server, engine.url)
    reason: str
    gpus: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    nodes: int = 1
    memory: MemoryEstimate | None = None
    data_parallel_size: int = 1  # independent engine replicas sharing the requests (runner/engines/replicas.py)
    devices: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entries of the GPUs it runs on, in order (one node)
    busy: tuple[str, ...] = ()  # GPUs left out because other processes hold their memory, and by whom
    warnings: tuple[str, ...] = ()  # what runs as asked but against a measurement (the job and the plan show them)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["memory"] = self.memory.as_dict() if self.memory else None
        return out


def bytes_per_param(model: ModelConfig) -> float:
    quant = (model.quantization or "").lower()
    if quant:
        if quant not in _QUANT_BYTES:
            raise SelectionError(
                f"model.quantization={quant!r} has no memory estimate; known: {', '.join(sorted(_QUANT_BYTES))}."
            )
        return _QUANT_BYTES[quant]
    dtype = str(model.dtype).lower()
    if dtype not in _DTYPE_BYTES:
        raise SelectionError(f"model.dtype={dtype!r} is not one of {', '.join(sorted(_DTYPE_BYTES))}.")
    return _DTYPE_BYTES[dtype]


def estimate_memory(model: ModelConfig, selection_cfg: SelectionConfig) -> MemoryEstimate:
    per_param = bytes_per_param(model)
    weights = float(model.params_b) * 1e9 * per_param
    reserve = max(weights * float(selection_cfg.kv_cache_reserve_fraction), float(selection_cfg.min_kv_cache_gib) * GiB)
    return MemoryEstimate(weights, reserve, per_param)


def select_engine(engine: EngineConfig, model: ModelConfig, hardware: Hardware) -> Selection:
    if engine.url:  # engine=vllm_server attached to a running server: nothing loads here
        return Selection("server", f"engine.url={engine.url}: the model is served there")
    kind = engine.kind
    if kind not in KINDS:
        raise SelectionError(f"engine.kind={kind!r} is not one of {', '.join(KINDS)}.")
    parallel, named = _sizes_from_args(engine)
    sizes = {k: v for k, v in parallel.items() if (v or 1) > 1}
    if sizes and kind in ("hf", "cpu", "vllm"):
        asked = " and ".join(f"{named[k]}={v}" for k, v in sizes.items())
        one = {"hf": "transformers on one device", "cpu": "vLLM's CPU build in one process", "vllm": "one GPU"}[kind]
        raise SelectionError(
            f"{asked} conflicts with engine={kind}, which runs {one}. Use engine=distributed (vLLM over "
            "several GPUs) for tensor or pipeline parallelism, or drop the size."
        )
    if sizes and kind == "auto":
        kind = "distributed"  # explicit parallel sizes ask for the distributed engine
    memory = estimate_memory(model, engine.selection)
    need = (
        f"{model.name} needs ~{memory.total_bytes / GiB:.1f} GiB "
        f"(weights {memory.weights_bytes / GiB:.1f} + KV reserve {memory.kv_reserve_bytes / GiB:.1f})"
    )

    hardware, busy = _free_gpus(hardware, engine, kind, memory)
    selection = _select(engine, hardware, _Ask(kind, parallel, named, memory, need))
    devices = tuple(_pin(g) for g in hardware.gpus[: selection.gpus]) if hardware.nodes == 1 else ()
    return replace(selection, devices=devices if selection.gpus else (), busy=busy)


def _pin(gpu: GPU) -> str:
    return gpu.device_id or str(gpu.physical_index if gpu.physical_index is not None else gpu.index)


def claimed_fraction(engine: EngineConfig) -> float:
    """The share of a GPU's memory a vLLM engine takes at start (vLLM's gpu_memory_utilization)."""
    from runner.config.resolvers import to_dict

    args = to_dict(engine.args or {})
    return float(args.get("gpu_memory_utilization") or to_dict(engine.gpu).get("gpu_memory_utilization") or 0.9)


def _free_gpus(
    hardware: Hardware, engine: EngineConfig, kind: str, memory: MemoryEstimate
) -> tuple[Hardware, tuple[str, ...]]:
    """The GPUs with room for the engine, and a line for each one other processes already fill.

    vLLM refuses to start unless gpu_memory_utilization x total memory is free; the transformers engine
    needs the model's estimate. A GPU without that room is not offered, rather than failing at load.
    """
    if not hardware.gpus or hardware.nodes > 1 or kind == "cpu":
        return hardware, ()
    fraction = claimed_fraction(engine)

    def room(gpu: GPU) -> bool:
        need = memory.total_bytes if kind == "hf" else fraction * gpu.total_bytes
        return gpu.free_bytes >= need

    free = tuple(g for g in hardware.gpus if room(g))
    busy = tuple(g.usage() for g in hardware.gpus if not room(g))
    if busy and not free:
        claim = "the model's estimate" if kind == "hf" else f"{fraction:.0%} of its memory (gpu_memory_utilization)"
        raise SelectionError(
            f"Every GPU this job may use is already in use: {'; '.join(busy)}. The engine needs {claim} free "
            "on a GPU. Wait for those processes or stop them, choose other GPUs with CUDA_VISIBLE_DEVICES, or "
            "claim less with +engine.args.gpu_memory_utilization=<fraction that is free>."
        )
    return replace(hardware, gpus=free), busy


PARALLEL_SIZES = ("tensor_parallel_size", "pipeline_parallel_size")


def _sizes_from_args(engine: EngineConfig) -> tuple[dict[str, int | None], dict[str, str]]:
    """The job's tensor and pipeline parallel sizes (None: not given). Sizes given as vLLM EngineArgs
    (`+engine.args.tensor_parallel_size=2`) count as `engine.<size>`: selection sizes the job (GPUs, executor,
    devices) by them, rather than vLLM alone meeting them at load (on the CPU build's one-process executor, a
    world of 3 waits forever for ranks that never start). Also returns the name the user wrote for each size,
    for messages."""
    from runner.config.resolvers import to_dict

    args = to_dict(engine.args or {})
    given: dict[str, int | None] = {
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
    }
    moved = {k: int(args[k]) for k in PARALLEL_SIZES if (args.get(k) or 1) > 1 and given[k] is None}
    named = {k: f"engine.args.{k}" if k in moved else f"engine.{k}" for k in PARALLEL_SIZES}
    return given | moved, named


@dataclass(frozen=True)
class _Ask:
    """What a job asks selection for, read once from its engine and model configs."""

    kind: str  # engine.kind, or "distributed" where parallel sizes were given with engine=auto
    parallel: dict[str, int | None]  # tensor and pipeline parallel sizes (None: chosen from memory)
    named: dict[str, str]  # the name the user wrote for each size
    memory: MemoryEstimate
    need: str  # the estimate in words, for reasons and messages

    @property
    def sizes(self) -> dict[str, int]:
        """The parallel sizes asked for explicitly (more than 1)."""
        return {k: v for k, v in self.parallel.items() if v is not None and v > 1}


def _select(engine: EngineConfig, hardware: Hardware, ask: _Ask) -> Selection:
    kind = ask.kind
    if kind == "hf":  # the transformers reference engine: one GPU if there is one, else the CPU
        return _select_hf(engine, hardware, ask)
    if kind == "cpu" or (kind == "auto" and hardware.gpu_count == 0):
        return _select_cpu(engine, hardware, ask)
    if hardware.gpu_count == 0:
        asked = "".join(f", {ask.named[k]}={v}" for k, v in ask.sizes.items())
        raise SelectionError(
            f"engine={engine.kind}{asked} needs a GPU, but none was found on this machine ({hardware.summary()}). "
            + (
                "Drop the parallel sizes to run on the CPU."
                if ask.sizes
                else "Use engine=auto (or engine=cpu) to run on the CPU."
            )
        )
    fraction = float(engine.selection.usable_gpu_fraction)
    per_gpu = min(g.total_bytes for g in hardware.gpus) * fraction
    needed = max(1, math.ceil(ask.memory.total_bytes / per_gpu))
    budget = f"{per_gpu / GiB:.0f} GiB usable per GPU ({fraction:.0%} of {hardware.gpus[0].name})"

    if kind == "vllm" or (kind == "auto" and needed == 1):
        if needed > 1:
            raise SelectionError(
                f"engine=vllm runs on one GPU, but {ask.need}, more than the {budget}. "
                "Use engine=distributed (or engine=auto) to spread it over several GPUs."
            )
        # Several GPUs on this node and a model that fits one: a replica per GPU shares the requests.
        local_gpus = hardware.gpus_per_node if hardware.nodes == 1 else 1
        dp = _data_parallel(engine, hardware, per_replica=1, default=local_gpus)
        return _with_replicas(Selection("vllm", f"fits one GPU: {ask.need} <= {budget}", gpus=1, memory=ask.memory), dp)
    return _select_distributed(engine, hardware, ask, needed, budget)


def _select_hf(engine: EngineConfig, hardware: Hardware, ask: _Ask) -> Selection:
    if hardware.gpu_count == 0:
        _check_host_memory(ask.memory, hardware, ask.need)
    where = "one GPU" if hardware.gpu_count else "the CPU"
    dp = _data_parallel(engine, hardware, per_replica=min(1, hardware.gpu_count), default=1)
    return _with_replicas(
        Selection(
            "hf", f"engine=hf: transformers on {where}; {ask.need}", gpus=min(1, hardware.gpu_count), memory=ask.memory
        ),
        dp,
    )


def _select_cpu(engine: EngineConfig, hardware: Hardware, ask: _Ask) -> Selection:
    _check_host_memory(ask.memory, hardware, ask.need)
    why = "no GPU found" if ask.kind == "auto" else "engine=cpu"
    dp = _data_parallel(engine, hardware, per_replica=0, default=1)
    warnings = (cpu_replicas_warning(dp),) if dp > 1 else ()
    selection = Selection("cpu", f"{why}: vLLM's CPU build; {ask.need}", memory=ask.memory, warnings=warnings)
    return _with_replicas(selection, dp)


def _select_distributed(engine: EngineConfig, hardware: Hardware, ask: _Ask, needed: int, budget: str) -> Selection:
    """Explicit sizes win; otherwise the fewest GPUs that hold the model."""
    tp, pp = _parallel_sizes(ask.parallel, needed, hardware, ask.need, budget)
    where = f"{hardware.nodes} nodes" if hardware.nodes > 1 else "this node"
    reason = (
        f"does not fit one GPU: {ask.need} > {budget}; tensor parallel {tp}"
        + (f" x pipeline parallel {pp}" if pp > 1 else "")
        + f" over {tp * pp} of {hardware.gpu_count} GPUs on {where}"
    )
    if ask.kind == "distributed" and needed == 1 and ask.parallel["tensor_parallel_size"] is None:
        reason = f"engine=distributed set in config; {ask.need} fits one GPU, tensor parallel {tp}"
    selection = Selection(
        "distributed",
        reason,
        gpus=tp * pp,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        nodes=math.ceil(tp * pp / hardware.gpus_per_node),
        memory=ask.memory,
    )
    dp = _data_parallel(engine, hardware, per_replica=tp * pp, default=1) if selection.nodes == 1 else 1
    return _with_replicas(selection, dp)


# `python bench/data_parallel.py` on this project's 2-core machine, 2026-11-29, undisturbed: the default job's
# 250 requests through one vLLM CPU engine vs 2 replicas pinned to a core each (one OpenMP thread each;
# busy max/mean 1.02, identical texts). The second core adds no throughput here (one engine with two threads
# was no faster either: 190-198 vs 196 tok/s), while two replicas each batch half the sequences. So the CPU
# paths below default to one engine, and an explicit engine.data_parallel_size > 1 there runs, with this warning.
CPU_REPLICAS_MEASURED = "measured on 2 cores: 2 replicas 148.5 output tok/s vs one engine 182.9 output tok/s (0.81x)"


def cpu_replicas_warning(dp: int) -> str:
    return (
        f"engine.data_parallel_size={dp} on the CPU: engine replicas on vLLM's CPU build were slower than one "
        f"engine ({CPU_REPLICAS_MEASURED}); running {dp} replicas as asked."
    )


def _data_parallel(engine: EngineConfig, hardware: Hardware, *, per_replica: int, default: int) -> int:
    """Replicas: engine.data_parallel_size if set, else `default`; each needs its own GPUs (or CPU core).

    On the CPU (`per_replica == 0`) the callers' default is 1: replicas there were measured slower than one
    engine (CPU_REPLICAS_MEASURED), so they run only when asked for (vLLM's CPU build: with a warning).
    """
    asked = engine.data_parallel_size
    dp = int(asked) if asked is not None else max(1, default)
    if dp < 1:
        raise SelectionError(f"engine.data_parallel_size={dp} must be at least 1 (or null to choose).")
    if per_replica == 0:
        if dp > hardware.cpu_count:
            raise SelectionError(
                f"engine.data_parallel_size={dp} asks for one CPU core per replica, "
                f"but {hardware.cpu_count} were found."
            )
    elif hardware.nodes > 1 and dp > 1:
        raise SelectionError(
            "engine.data_parallel_size > 1 runs replicas on this node only; with a Ray cluster use tensor or "
            "pipeline parallelism (engine=distributed) or run one job per node (hydra/launcher=ray)."
        )
    elif dp * per_replica > hardware.gpus_per_node:
        raise SelectionError(
            f"engine.data_parallel_size={dp} replicas x {per_replica} GPU(s) each = {dp * per_replica} GPUs, "
            f"but this node has {hardware.gpus_per_node} ({hardware.summary()})."
        )
    return dp


def _with_replicas(selection: Selection, dp: int) -> Selection:
    if dp == 1:
        return selection
    return replace(
        selection,
        data_parallel_size=dp,
        gpus=selection.gpus * dp,
        reason=f"{selection.reason}; {dp} data-parallel replicas share the requests",
    )


def _parallel_sizes(
    parallel: dict[str, int | None], needed: int, hardware: Hardware, need: str, budget: str
) -> tuple[int, int]:
    per_node = hardware.gpus_per_node
    tp, pp = parallel["tensor_parallel_size"], parallel["pipeline_parallel_size"]
    if tp is None and pp is None:
        if needed > hardware.gpu_count:
            raise SelectionError(
                f"{need}: more than all GPU memory found ({hardware.gpu_count} GPU(s), {budget}; "
                f"it would take {needed}). Use a quantized variant, more GPUs or nodes (a Ray cluster), "
                "or lower engine.selection.kv_cache_reserve_fraction if the estimate is too cautious."
            )
        if needed <= per_node:
            return min(_next_power_of_two(needed), per_node), 1
        return per_node, math.ceil(needed / per_node)
    tp, pp = tp or 1, pp or 1
    if tp * pp > hardware.gpu_count:
        raise SelectionError(
            f"engine asks for tensor_parallel_size={tp} x pipeline_parallel_size={pp} = {tp * pp} GPUs, "
            f"but only {hardware.gpu_count} were found ({hardware.summary()})."
        )
    if tp > per_node:
        raise SelectionError(
            f"engine.tensor_parallel_size={tp} exceeds the {per_node} GPUs of one node; tensor parallelism "
            "stays within a node. Use pipeline_parallel_size across nodes."
        )
    return tp, pp


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _check_host_memory(memory: MemoryEstimate, hardware: Hardware, need: str) -> None:
    if hardware.host_memory_bytes and memory.total_bytes > hardware.host_memory_bytes:
        raise SelectionError(
            f"{need}, more than this machine's {hardware.host_memory_bytes / GiB:.0f} GiB of RAM and no GPU "
            "was found. Run it on a GPU machine, or pick a smaller or quantized model."
        )
