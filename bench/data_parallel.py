"""One engine vs data-parallel replicas on the default job's requests, interleaved in one run.

    python bench/data_parallel.py [--per-dataset 50] [--rounds 2] [--replicas 2] [--bindings core,threads]

The requests are the default job's: `--per-dataset` chat-templated prompts of each of the five
text-geospatial tasks, each with its task's max_gen_toks (64 to 256), greedy, the model's EOS as stop,
in one call sorted longest prompt first (as the lm-eval bridge orders them). Every configuration is
loaded once, with the runner's own engine settings (conf/engine/auto.yaml, conf/model/smollm2_135m.yaml);
then each round runs the same fresh slice of prompts (no prefix-cache hits) through each configuration,
in a rotated order, so drift in the machine's load hits them alike:
  - `one`: one engine, as `engine.data_parallel_size=1` runs it (in this process);
  - `<N>x<binding>`: N replicas (runner/engines/replicas.py, `cpu_binding`): `core` pins each replica to its
    share of the allowed cores with one OpenMP thread per core (the runner's default), `threads` sets the
    threads but lets the OS place the replicas, `none` leaves both alone (each replica's OpenMP team is
    then sized for the whole machine: far slower, and a round takes many minutes).
Prints the machine, its load, each configuration's median wall time and output tok/s, each replica's
busy time and requests with the busy max/mean, whether the texts match the single engine's, and last the
ratio (replicas / one engine throughput; goal: >= 1.0 with balance max/mean <= 1.15).
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
TASKS = {  # task: its max_gen_toks (adapters/tasks/text_geospatial/<task>.yaml)
    "spatial_reasoning": 64,
    "coordinate_processing": 128,
    "address_parsing": 192,
    "location_ner": 192,
    "ner_locations": 256,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-dataset", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--bindings", default="core,threads")
    args = parser.parse_args()
    load_before = os.getloadavg()

    from bridge_vs_raw import vllm_version
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.catalog.weights import resolve_model
    from runner.config.resolvers import CONFIG_DIR
    from runner.engines.base import SamplingSettings
    from runner.engines.build import build_engine
    from runner.engines.replicas import ReplicatedEngine
    from runner.engines.selection import Selection

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config")
    source = resolve_model(cfg.model, cfg.paths.cache_dir)
    one = Selection("cpu", "bench")
    build = {
        "selection": one,
        "devices": (),
        "source": source,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "engine": OmegaConf.to_container(cfg.engine, resolve=True),
    }
    start = time.perf_counter()
    engines = {"one": build_engine(one, source, cfg.model, cfg.engine)}  # sets cpu_env here, as the runner does
    loads = {"one": time.perf_counter() - start}
    for binding in args.bindings.split(","):
        start = time.perf_counter()
        engines[f"{args.replicas}x{binding}"] = ReplicatedEngine(
            build, args.replicas, tokenizer_source=source, cpu_binding=binding
        )
        loads[f"{args.replicas}x{binding}"] = time.perf_counter() - start
    tokenizer = engines["one"].tokenizer

    data = ROOT / "adapters" / "tasks" / "text_geospatial" / "data"
    rows = {
        task: [json.loads(line)["prompt"] for line in (data / f"{task}.jsonl").read_text().splitlines()]
        for task in TASKS
    }

    def requests(round_: int) -> tuple[list[list[int]], list[SamplingSettings]]:
        """The round's slice of every task, chat-templated, longest prompt first."""
        items = []
        for task, max_tokens in TASKS.items():
            chosen = rows[task][round_ * args.per_dataset : (round_ + 1) * args.per_dataset]
            for question in chosen:
                ids = tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
                )
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5: a BatchEncoding
                settings = SamplingSettings(max_tokens=max_tokens, stop=(tokenizer.eos_token,), seed=1234)
                items.append((ids, settings))
        items.sort(key=lambda item: -len(item[0]))
        return [ids for ids, _ in items], [s for _, s in items]

    engines["one"].generate([[1, 2, 3]], SamplingSettings(max_tokens=4))  # warm-up, not timed
    for name, engine in engines.items():
        if name != "one":
            engine.generate([[1, 2, 3]] * args.replicas, SamplingSettings(max_tokens=4))

    names = list(engines)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    texts: dict[str, list[list[str]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        prompts, settings = requests(round_)
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            engine = engines[name]
            before = dict(engine.stats.extra)
            start = time.perf_counter()
            out = engine.generate(prompts, settings)
            wall = time.perf_counter() - start
            busy = [
                engine.stats.extra.get(f"replica_{r}_busy_s", 0.0) - before.get(f"replica_{r}_busy_s", 0.0)
                for r in range(args.replicas if name != "one" else 0)
            ]
            taken = [
                engine.stats.extra.get(f"replica_{r}_requests", 0.0) - before.get(f"replica_{r}_requests", 0.0)
                for r in range(len(busy))
            ]
            tokens = sum(c.output_tokens for c in out)
            runs[name].append({"wall": wall, "tok_s": tokens / wall, "busy": busy, "taken": taken, "tokens": tokens})
            texts[name].append([c.text for c in out])
            print(f"round {round_ + 1} {name:>8}: {wall:7.1f} s, {tokens / wall:6.1f} output tok/s", flush=True)
    for engine in engines.values():
        engine.shutdown()

    print(machine())
    print(
        f"load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"{vllm_version()}, lm_eval {version('lm_eval')}, model smollm2_135m fp32, vLLM CPU build, eager")
    n = len(TASKS) * args.per_dataset
    print(
        f"requests per round: {n} ({args.per_dataset} per dataset, 64-256 new tokens), greedy, "
        f"rounds: {args.rounds} (median), interleaved"
    )
    for name in names:
        wall = statistics.median(r["wall"] for r in runs[name])
        tok_s = statistics.median(r["tok_s"] for r in runs[name])
        line = f"{name:>8}: load {loads[name]:5.1f} s, median {wall:7.1f} s, {tok_s:6.1f} output tok/s"
        if name != "one":
            same = texts[name] == texts["one"]
            balance = []
            for run in runs[name]:
                mean = sum(run["busy"]) / len(run["busy"])
                balance.append(max(run["busy"]) / mean if mean else float("nan"))
            per_replica = "; ".join(
                "busy "
                + "/".join(f"{b:.1f}" for b in r["busy"])
                + " s, requests "
                + "/".join(f"{t:.0f}" for t in r["taken"])
                for r in runs[name]
            )
            line += (
                f", ratio {tok_s / statistics.median(r['tok_s'] for r in runs['one']):.2f}x, "
                f"busy max/mean {statistics.median(balance):.3f} (per round: {per_replica}), texts match one: {same}"
            )
        print(line)
    print("goal: replicas / one >= 1.0x with busy max/mean <= 1.15")


if __name__ == "__main__":
    main()
