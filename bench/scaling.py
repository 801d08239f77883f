"""Time vs number of requests through the lm-eval bridge: close to linear, no loss of throughput at scale.

    python bench/scaling.py [--sizes 16,128,1024] [--max-tokens 32] [--repeat 3]

One vLLM engine (CPU build here, the GPU build elsewhere with BENCH_GPU=1) on the default model in fp32
serves `generate_until` batches of growing size; the prompts are distinct chat-templated items of the
five text-geospatial tasks (no two alike, so the prefix cache cannot shortcut the larger batches).
Prints the machine, versions, each size's median wall time and output tokens/s, and last the two
ratios: time(largest)/time(middle) against the ideal (the size ratio), and throughput(largest) /
throughput(middle) (goal: >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

from common import machine  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASKS = ("spatial_reasoning", "coordinate_processing", "address_parsing", "location_ner", "ner_locations")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,128,1024")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from bridge_vs_raw import default_engine, vllm_version
    from lm_eval.api.instance import Instance

    on_gpu = os.environ.get("BENCH_GPU") == "1"
    engine, lm = default_engine(on_gpu)

    data = ROOT / "adapters" / "tasks" / "text_geospatial" / "data"
    questions = [
        json.loads(line)["prompt"] for task in TASKS for line in (data / f"{task}.jsonl").read_text().splitlines()
    ]
    if max(sizes) > len(questions):
        raise SystemExit(f"at most {len(questions)} distinct prompts are available")
    contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    gen_kwargs = {"until": [], "max_gen_toks": args.max_tokens, "do_sample": False, "temperature": 0.0}

    def batch(n: int, offset: int) -> tuple[float, int]:
        # A different slice each repeat: the prefix cache never holds a batch's prompts already.
        chosen = [contexts[(offset + i) % len(contexts)] for i in range(n)]
        instances = [Instance("generate_until", {}, (c, dict(gen_kwargs)), i) for i, c in enumerate(chosen)]
        before = engine.stats.output_tokens
        start = time.perf_counter()
        lm.generate_until(instances)
        return time.perf_counter() - start, engine.stats.output_tokens - before

    batch(8, len(contexts) - 8)  # warm-up, not timed
    results: dict[int, tuple[float, float]] = {}
    offset = 0
    for n in sizes:
        times, tokens = [], []
        for _ in range(args.repeat):
            elapsed, produced = batch(n, offset)
            offset += n
            times.append(elapsed)
            tokens.append(produced)
        median = statistics.median(times)
        results[n] = (median, statistics.median(t / s for t, s in zip(tokens, times, strict=True)))
    engine.shutdown()

    print(machine())
    print(f"{vllm_version()}, lm_eval {version('lm_eval')}, model smollm2_135m fp32, {'GPU' if on_gpu else 'CPU'}")
    print(f"max new tokens: {args.max_tokens}, greedy, repeats: {args.repeat} (median), distinct prompts per batch")
    for n, (median, throughput) in results.items():
        print(f"{n:>6} requests: {median:8.2f} s, {median / n * 1000:7.1f} ms/request, {throughput:7.1f} output tok/s")
    middle, largest = sorted(sizes)[-2], max(sizes)
    time_ratio = results[largest][0] / results[middle][0]
    print(f"time {largest}/{middle}: {time_ratio:.2f} (linear: {largest / middle:.2f})")
    print(f"throughput {largest} vs {middle}: {results[largest][1] / results[middle][1]:.2f}x (goal >= 1.0)")


if __name__ == "__main__":
    main()
