"""A rerun of a finished job with the response cache vs the first run, through the real CLI.

    python bench/cache_rerun.py [--limit 50] [--repeat 3]

The first run loads the model and generates; each rerun of the same command should be answered from
the cache without loading the model. Prints the machine, the sample count, the first run's time, the
median rerun time, the engine requests of the reruns (goal: 0) and the speed-up last (goal: >= 20x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=50)  # the job `make run` runs
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench-cache-")
    command = [sys.executable, "-m", "runner", f"limit={args.limit}", f"paths.output_dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def run() -> float:
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    first = run()
    reruns = [run() for _ in range(args.repeat)]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["text_geospatial"], output_format="list", order_by=["start_time"])
    engine_requests = [int(r.data.metrics.get("requests", -1)) for r in runs[1:]]
    total = int(runs[0].data.metrics["requests_total"])
    median = statistics.median(reruns)
    print(machine())
    print(f"job: default category (text_geospatial), smollm2_135m, limit={args.limit}: {total} requests")
    print(f"first run {first:.1f} s; reruns (median of {args.repeat}) {median:.2f} s")
    print(f"engine requests in the reruns: {engine_requests} (goal: all 0)")
    print(f"speed-up first/rerun: {first / median:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
