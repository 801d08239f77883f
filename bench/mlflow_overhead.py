"""What MLflow logging adds to a job, for a 500-sample dataset, through the runner's own Tracker.

    python bench/mlflow_overhead.py [--repeat 5] [--samples 500]

One "job" logs what runner/job/run.py logs for one dataset: the flattened config as params, tags, the
dataset's metrics and telemetry, the per-sample table (prompt, response, target, score, parsed_ok),
lm-eval's samples file and the run folder's small files, with MLflow's system-metrics thread on.
The prompts and targets are the real spatial_reasoning items (its frozen data file). The same job's
local writes without MLflow are timed side by side, so the difference is what MLflow adds; the one-time
`import mlflow` of a process is reported apart. Goal: < 2 s per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOAL_S = 2.0


def fake_job_files(out_dir: Path, items: list[dict]) -> dict[str, list]:
    """What evaluate_dataset leaves in a run folder, with responses equal to the targets."""
    lm_eval_dir = out_dir / "lm_eval" / "model"
    lm_eval_dir.mkdir(parents=True)
    with (lm_eval_dir / "samples_spatial_reasoning.jsonl").open("w") as f:
        for i, item in enumerate(items):
            f.write(
                json.dumps(
                    {
                        "doc_id": i,
                        "doc": item,
                        "target": item["answer"],
                        "arguments": [[item["prompt"]]],
                        "resps": [[item["answer"]]],
                        "filtered_resps": [item["answer"]],
                        "acc": 1.0,
                    }
                )
                + "\n"
            )
    (lm_eval_dir / "results.json").write_text(json.dumps({"results": {"spatial_reasoning": {"acc,none": 1.0}}}))
    for name in ("telemetry.json", "hardware.json", "config_resolved.yaml", "runner.log", "plan.json"):
        (out_dir / name).write_text("x" * 4000)
    return {
        "doc_id": list(range(len(items))),
        "prompt": [item["prompt"] for item in items],
        "response": [item["answer"] for item in items],
        "target": [item["answer"] for item in items],
        "score": [1.0] * len(items),
        "parsed_ok": [True] * len(items),
    }


def one_job(cfg, root: Path, items: list[dict], *, tracked: bool) -> float:
    from runner.tracking import mlflow_run

    out_dir = Path(tempfile.mkdtemp(dir=root))
    metrics = {f"spatial_reasoning/acc_k{k}": 0.5 for k in range(1, 6)} | {"spatial_reasoning/score": 0.5}
    metrics |= {f"telemetry_{i}": float(i) for i in range(20)}
    start = time.perf_counter()
    table = fake_job_files(out_dir, items)
    if tracked:
        with mlflow_run.Tracker(cfg, out_dir, {"engine": "cpu", "model": "smollm2_135m"}) as tracker:
            tracker.log_metrics(metrics)
            tracker.log_table(table, "samples/spatial_reasoning/spatial_reasoning.json")
            for name in ("telemetry.json", "hardware.json", "config_resolved.yaml", "runner.log", "plan.json"):
                tracker.log_artifact(out_dir / name)
            tracker.log_artifact(out_dir / "lm_eval", "lm_eval")
    else:
        (out_dir / "tables").mkdir()
        (out_dir / "tables" / "samples.json").write_text(json.dumps(table))
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    data = ROOT / "adapters/tasks/text_geospatial/data/spatial_reasoning.jsonl"
    items = [json.loads(line) for line in data.read_text().splitlines() if line.strip()][: args.samples]
    root = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))

    import_s = float(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t = time.perf_counter(); import mlflow; print(time.perf_counter() - t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    from hydra import compose, initialize_config_dir

    from runner.config.resolvers import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.output_dir={root}"])
    one_job(cfg, root, items, tracked=True)  # warm: the store's tables are created once per store
    tracked, local = [], []
    for _ in range(args.repeat):  # interleaved, so drift on the machine hits both alike
        tracked.append(one_job(cfg, root, items, tracked=True))
        local.append(one_job(cfg, root, items, tracked=False))
    added = statistics.median(tracked) - statistics.median(local)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"mlflow {version('mlflow')}, store {cfg.tracking.uri.split(':')[0]}, system metrics on")
    print(f"samples: {len(items)} (spatial_reasoning), {len(cfg.keys())} config groups flattened to params")
    print(f"repeats: {args.repeat} (median reported)")
    with_mlflow, without = statistics.median(tracked), statistics.median(local)
    print(f"job with MLflow {with_mlflow:.3f} s, same job's local writes only {without:.3f} s")
    print(f"one-time `import mlflow` per process: {import_s:.2f} s")
    print(f"MLflow adds per run: {added:.3f} s (goal < {GOAL_S:.0f} s): {GOAL_S / added:.1f}x under the goal")


if __name__ == "__main__":
    main()
