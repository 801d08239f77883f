"""Check the runner's own telemetry on a GPU against independent measurements taken beside it.

    python bench/gpu_check.py [--model qwen25_7b] [--prompts 64] [--new-tokens 64] [--device cuda] [--timeout-s 280]

The equivalent of `engine=hf model=qwen25_7b model.load_format=dummy` on a small generated task, for a
GPU machine without vLLM, Hydra, lm-eval or MLflow (torch, transformers, psutil and nvidia-ml-py are
enough): the model is built from runner/catalog/architectures/<model>/config.json with random weights through the
runner's HF engine (batch size 16, as conf/engine/auto.yaml sets for engine=hf). On a machine without the
default model's package, carry `.cache/dummy/<model>` (config and tokenizer; see bench/gpu_bandwidth.py).

What the runner reports, and what it is checked against:

- Peak GPU memory: the runner's `PeakGPUMemory` (runner/machine/peak_memory.py: NVML per-process accounting,
  summed over this process tree, sampled every 0.5 s) runs over engine load and generation, as it runs
  over a whole job in runner/job/run.py. Beside it a thread of this script polls NVML's device-wide used
  memory every 50 ms, minus the baseline read before torch touched the GPU (so both include the CUDA
  context). PASS when runner / independent is within 10%. torch.cuda.max_memory_reserved/allocated
  are printed for context (they exclude the CUDA context, ~0.5 GiB).
- Output tokens/s: the runner's `EngineStats.as_metrics()["output_tokens_per_s"]` is
  `output_tokens / generate_seconds`, where `Engine.generate` times its whole call with perf_counter
  (prefill, every decode step, detokenization; no warm-up excluded) and `output_tokens` sums each
  completion's count of new tokens before the first end-of-sequence token. This script makes exactly
  one `engine.generate` call (no warm-up call, so the runner's stats cover that call alone) and measures
  the same window from outside: torch.cuda.synchronize, perf_counter, the call, synchronize,
  perf_counter. It counts the tokens itself from the raw token ids that `model.generate` returned
  (observed by a pass-through wrapper; Completion carries no ids): per row, the ids after the prompt up
  to the first end-of-sequence id. Same definition on both sides (prefill included, end-of-sequence and
  padding excluded), independent measurements. PASS when runner / stopwatch is within 5%.
- Latency: the HF engine gives each request its batch's `model.generate` time; the runner's
  `latency_mean_s` is compared with the same per-batch times taken by the wrapper (synchronized),
  weighted by rows as the runner weights them. PASS within 5%.
- Load time: `engine.stats.load_seconds` beside an outside stopwatch around the engine's construction
  (information only: the runner's window starts after its imports, which this script makes beforehand).
- Memory handed back: after engine.shutdown(), gc and torch.cuda.empty_cache(), NVML device used minus
  the baseline. PASS within 1 GiB (the CUDA context, ~0.5 GiB, stays until the process exits).

The last line is a one-line JSON summary; the exit status is 1 when any check fails, 3 when the run takes
longer than --timeout-s (it is aborted with a message). Without pynvml, the baseline and the independent
sampler fall back to torch.cuda.mem_get_info (which creates the CUDA context first, so the baseline then
includes it) and the runner's peak is n/a. `--device cpu --model tiny_llama` checks the script itself on a
CPU: the GPU memory checks print "n/a (no NVML)" and do not fail; tokens/s and latency still apply.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.machine.peak_memory import _Sampler  # noqa: E402 - after the path is set; imports only psutil

GIB = 2**30
PEAK_TOLERANCE = 0.10
RATE_TOLERANCE = 0.05
RELEASE_TOLERANCE_BYTES = 1 * GIB
WORDS = (
    "the river city north station morning report train signal market bridge winter road harbor tower "
    "quiet early evening light measured distance between two towns along coast over hills south east "
    "west small large old new weather clear rain wind field school library museum garden square street"
).split()


class Watchdog:
    """Ends the process with a clear message if the whole check runs longer than its budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.phase = "start"
        self.started = time.perf_counter()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="gpu_check-watchdog", daemon=True).start()

    def _watch(self) -> None:
        if not self._done.wait(self.seconds):
            print(
                f"\ngpu_check: ABORTED: exceeded --timeout-s {self.seconds:g} s during phase '{self.phase}' "
                f"(elapsed {time.perf_counter() - self.started:.1f} s)",
                flush=True,
            )
            os._exit(3)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stop(self) -> None:
        self._done.set()


class DeviceMemory:
    """Device-wide used memory of GPU 0, read independently of the runner: NVML, else torch.cuda.mem_get_info."""

    def __init__(self, device: str) -> None:
        self.source = "none"
        self.note = ""
        self.card = f"CPU ({platform.machine()})"
        self.driver = "n/a"
        self._handle = None
        if not device.startswith("cuda"):
            self.note = "n/a (no NVML): --device is not cuda"
            return
        try:
            import pynvml

            pynvml.nvmlInit()  # held until the process exits; the runner's own init/shutdown pairs nest inside
            self._pynvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.card = _text(pynvml.nvmlDeviceGetName(self._handle))
            self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
            self.source = "nvml"
        except Exception as exc:  # noqa: BLE001 - no bindings or no driver: fall back and say so
            import torch

            if not torch.cuda.is_available():
                self.note = f"n/a (no NVML: {exc!r}; torch sees no GPU)"
                return
            self.source = "torch"
            self.card = torch.cuda.get_device_name(0)
            self.driver = f"n/a (CUDA runtime {torch.version.cuda})"
            self.note = (
                f"NVML unavailable ({exc!r}): device memory from torch.cuda.mem_get_info, whose first call "
                "creates the CUDA context, so the baseline includes it"
            )

    @property
    def available(self) -> bool:
        return self.source != "none"

    def used(self) -> int:
        if self.source == "nvml":
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        if self.source == "torch":
            import torch

            free, total = torch.cuda.mem_get_info(0)
            return int(total - free)
        return 0


class DeviceSampler(_Sampler):
    """Polls device used memory minus a baseline every `interval_s` in a thread; keeps the peak. (Only the
    thread loop is the runner's; what is read, and how often, is this script's own.)"""

    def __init__(self, memory: DeviceMemory, baseline: int, interval_s: float = 0.05) -> None:
        super().__init__(interval_s)
        self.memory, self.baseline = memory, baseline
        self.samples = 0

    def sample(self) -> int:
        if self.memory.available:
            self.peak_bytes = max(self.peak_bytes, self.memory.used() - self.baseline)
            self.samples += 1
        return self.peak_bytes


class GenerateSpy:
    """Wraps `model.generate` without changing what it does: times each call (synchronized) and counts the
    new token ids of each row up to the first end-of-sequence id, from the tensor generate returned."""

    def __init__(self, model, eos_id: int | None, device: str) -> None:
        self.model, self.eos_id, self.device = model, eos_id, device
        self.batches: list[tuple[int, float]] = []  # (rows, seconds) per model.generate call
        self.tokens = 0
        self.steps = 0
        self._original = model.generate

        def generate(*args, **kwargs):
            width = kwargs["input_ids"].shape[1]
            _sync(device)
            start = time.perf_counter()
            out = self._original(*args, **kwargs)
            _sync(device)
            seconds = time.perf_counter() - start
            rows = out[:, width:].tolist()
            for row in rows:
                self.tokens += row.index(eos_id) if eos_id in row else len(row)
            self.steps += out.shape[1] - width
            self.batches.append((len(rows), seconds))
            return out

        model.generate = generate

    def remove(self) -> None:
        del self.model.generate  # the instance attribute: the class's generate shows through again
        self.model = None

    def latency_mean(self) -> float:
        rows = sum(n for n, _ in self.batches)
        return sum(n * s for n, s in self.batches) / rows if rows else float("nan")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def synthetic_prompts(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """`count` prompts of plain generated sentences, 10 to 60 words each, as token ids."""
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 60))]
        text = f"Note {i}: " + " ".join(words).capitalize() + ". Continue the note:"
        prompts.append(tokenizer(text, add_special_tokens=False).input_ids)
    return prompts


def _finite(value):
    """NaN (a ratio with nothing to compare) as null, so the summary is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def compare(runner: float, independent: float, tolerance: float) -> tuple[float, str]:
    ratio = runner / independent if independent else float("nan")
    return ratio, ("PASS" if abs(ratio - 1) <= tolerance else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen25_7b", help="an architecture under runner/catalog/architectures")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="the HF engine's batch size (engine=hf: 16)")
    parser.add_argument("--timeout-s", type=float, default=280)
    args = parser.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    watchdog = Watchdog(args.timeout_s)

    # 1. Baseline before torch touches the GPU (NVML needs no CUDA context).
    watchdog.phase = "baseline"
    memory = DeviceMemory(args.device)
    baseline = memory.used() if memory.available else 0
    if memory.note:
        print(f"gpu_check: {memory.note}")

    watchdog.phase = "imports"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401 - imported before timing

    from bench.gpu_bandwidth import model_folder
    from runner.engines.base import SamplingSettings
    from runner.engines.hf import HFEngine
    from runner.machine.peak_memory import PeakGPUMemory, nvml_process_memory

    folder = model_folder(args.model)

    # 2-3. Load and generate with the runner's sampler and the independent one running, as over a job.
    runner_gpu = PeakGPUMemory()
    independent = DeviceSampler(memory, baseline)
    with runner_gpu, independent:
        watchdog.phase = "load"
        _sync(args.device)
        start = time.perf_counter()
        engine = HFEngine(str(folder), dtype=dtype, load_format="dummy", device=args.device, batch_size=args.batch_size)
        _sync(args.device)
        load_stopwatch = time.perf_counter() - start
        params = sum(p.numel() for p in engine.model.parameters())
        weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())

        watchdog.phase = "generate"
        prompts = synthetic_prompts(engine.tokenizer, args.prompts)
        spy = GenerateSpy(engine.model, engine.tokenizer.eos_token_id, args.device)
        settings = SamplingSettings(max_tokens=args.new_tokens)  # greedy (temperature 0), as the runner's default
        _sync(args.device)
        start = time.perf_counter()
        completions = engine.generate(prompts, settings)
        _sync(args.device)
        stopwatch = time.perf_counter() - start
        spy.remove()
        nvml_processes = nvml_process_memory() if runner_gpu.available else None
    metrics = engine.stats.as_metrics()
    completions_tokens = sum(c.output_tokens for c in completions)
    own_tokens, own_steps, own_latency, batches = spy.tokens, spy.steps, spy.latency_mean(), len(spy.batches)
    max_reserved = torch.cuda.max_memory_reserved() if args.device.startswith("cuda") else 0
    max_allocated = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else 0

    # 4. Hand everything back, then read the device again.
    watchdog.phase = "shutdown"
    engine.shutdown()
    del completions, spy
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    after = memory.used() if memory.available else 0

    checks: dict[str, str] = {}
    summary: dict = {"model": args.model, "device": args.device, "dtype": dtype, "card": memory.card}
    print()
    print(
        f"card: {memory.card}; driver {memory.driver}; torch {torch.__version__}, "
        f"transformers {version('transformers')}, Python {platform.python_version()}"
    )
    print(
        f"model: {args.model} ({dtype}, random weights, {params / 1e9:.2f} B params, {_gib(weights)}); "
        f"{args.prompts} prompts ({sum(map(len, prompts))} prompt tokens), greedy, up to {args.new_tokens} new "
        f"tokens, HF engine batch {args.batch_size} on {args.device}"
    )
    print(f"load: runner {engine.stats.load_seconds:.2f} s (stats.load_seconds); stopwatch {load_stopwatch:.2f} s")
    summary["load_s"] = {"runner": engine.stats.load_seconds, "stopwatch": load_stopwatch}

    if runner_gpu.available and memory.available:
        ratio, verdict = compare(runner_gpu.peak_bytes, independent.peak_bytes, PEAK_TOLERANCE)
        print(
            f"peak GPU memory: runner {_gib(runner_gpu.peak_bytes)} (PeakGPUMemory: NVML per process, every 0.5 s) "
            f"vs NVML device used - baseline {_gib(independent.peak_bytes)} ({independent.samples} samples at "
            f"50 ms; baseline {_gib(baseline)} from {memory.source}): ratio {ratio:.3f}, {verdict} "
            f"(within {PEAK_TOLERANCE:.0%})"
        )
    else:
        ratio, verdict = float("nan"), "n/a"
        why = "no NVML" if not memory.available else "the runner's PeakGPUMemory has no NVML"
        seen = f"; NVML-independent device peak {_gib(independent.peak_bytes)}" if memory.available else ""
        print(f"peak GPU memory: n/a ({why}){seen}")
    checks["peak_memory"] = verdict
    summary["peak_gpu_gib"] = {
        "runner": runner_gpu.peak_bytes / GIB if runner_gpu.available else None,
        "nvml_device": independent.peak_bytes / GIB if memory.available else None,
        "torch_max_reserved": max_reserved / GIB if args.device.startswith("cuda") else None,
        "ratio": ratio,
    }
    if args.device.startswith("cuda"):
        print(
            f"  context: torch max_memory_reserved {_gib(max_reserved)}, max_memory_allocated {_gib(max_allocated)} "
            f"(neither counts the CUDA context); NVML per-process bytes {nvml_processes}, this pid {os.getpid()}"
        )

    runner_rate = metrics["output_tokens_per_s"]
    own_rate = own_tokens / stopwatch
    ratio, verdict = compare(runner_rate, own_rate, RATE_TOLERANCE)
    checks["output_tok_s"] = verdict
    print(
        f"output tok/s: runner {runner_rate:.1f} ({metrics['output_tokens']:.0f} tokens / "
        f"{metrics['generate_s']:.3f} s, EngineStats) vs stopwatch {own_rate:.1f} ({own_tokens} tokens counted "
        f"from generate's ids / {stopwatch:.3f} s); ratio {ratio:.3f}: {verdict} (within {RATE_TOLERANCE:.0%})"
    )
    print(
        f"  tokens: runner stats {metrics['output_tokens']:.0f}, sum of Completion.output_tokens {completions_tokens}, "
        f"counted {own_tokens} ({own_steps} decode steps over {batches} batches, "
        f"{args.prompts * args.new_tokens} at most)"
    )
    summary["output_tok_s"] = {"runner": runner_rate, "stopwatch": own_rate, "ratio": ratio}
    summary["output_tokens"] = {"runner": metrics["output_tokens"], "counted": own_tokens}

    runner_latency = metrics.get("latency_mean_s", float("nan"))
    ratio, verdict = compare(runner_latency, own_latency, RATE_TOLERANCE)
    checks["latency"] = verdict
    print(
        f"latency mean: runner {runner_latency:.3f} s (p50 {metrics.get('latency_p50_s', float('nan')):.3f}, "
        f"p95 {metrics.get('latency_p95_s', float('nan')):.3f}) vs stopwatch per batch {own_latency:.3f} s; "
        f"ratio {ratio:.3f}: {verdict} (within {RATE_TOLERANCE:.0%})"
    )
    summary["latency_mean_s"] = {"runner": runner_latency, "stopwatch": own_latency, "ratio": ratio}

    if memory.available:
        left = after - baseline
        verdict = "PASS" if left <= RELEASE_TOLERANCE_BYTES else "FAIL"
        print(
            f"after shutdown: device used {_gib(after)} vs baseline {_gib(baseline)}: {_gib(left)} left "
            f"(torch reserved {_gib(torch.cuda.memory_reserved()) if torch.cuda.is_available() else 'n/a'}); "
            f"{verdict} (within {_gib(RELEASE_TOLERANCE_BYTES)})"
        )
        summary["after_shutdown_gib"] = {"used": after / GIB, "baseline": baseline / GIB, "left": left / GIB}
    else:
        verdict = "n/a"
        print("after shutdown: n/a (no NVML)")
    checks["released"] = verdict

    failed = [name for name, verdict in checks.items() if verdict == "FAIL"]
    summary.update(checks=checks, ok=not failed, elapsed_s=round(watchdog.elapsed(), 1))
    watchdog.stop()
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} in {watchdog.elapsed():.1f} s")
    print(json.dumps(_finite(summary)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
