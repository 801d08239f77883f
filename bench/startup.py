"""Start-up cost of the commands that should answer instantly: --help, mode=list, mode=plan.

    python bench/startup.py [--repeat 5]

Prints the machine, versions, each command's median wall time over the repeats, and the ratio to the
2-second goal last. Heavy libraries (torch, vLLM, MLflow) must stay out of these paths.
"""

from __future__ import annotations

import argparse
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
GOAL_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench-startup-")
    commands = {
        "--help": ["--help"],
        "mode=list": ["mode=list"],
        "mode=plan": ["mode=plan", "category=text_geospatial", "model=qwen25_7b", f"paths.output_dir={out}"],
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"hydra-core {version('hydra-core')}, omegaconf {version('omegaconf')}")
    print(f"repeats: {args.repeat} (median reported)")
    ratios = {}
    for name, argv in commands.items():
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runner", *argv], cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        ratios[name] = GOAL_S / median
        print(f"{name:<10} median {median:.2f} s (min {min(times):.2f}, max {max(times):.2f})")
    for name, ratio in ratios.items():
        print(f"ratio goal/actual {name}: {ratio:.2f}x ({'meets' if ratio >= 1 else 'misses'} the {GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
