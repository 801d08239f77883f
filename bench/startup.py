"""Start-up cost of the commands that should answer instantly: --help, mode=list, mode=plan.

    python bench/startup.py [--repeat 5]

Prints the machine, versions, each command's median wall time over the repeats, and the ratio to the
2-second goal last. Heavy libraries (torch, vLLM, MLflow) must stay out of these paths. On vLLM's CPU build with
tcmalloc here, `python -m runner` starts twice (runner/machine/allocator.py): each command also runs with
`RUNNER_TCMALLOC=0`, interleaved, and the re-execution's cost is printed beside it.
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
        times: dict[str, list[float]] = {"as is": [], "RUNNER_TCMALLOC=0": []}
        for _ in range(args.repeat):
            for variant, runs in times.items():  # interleaved, so both see the same machine
                env = os.environ | ({"RUNNER_TCMALLOC": "0"} if variant != "as is" else {})
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "runner", *argv], cwd=ROOT, env=env, check=True, capture_output=True
                )
                runs.append(time.perf_counter() - start)
        median, without = (statistics.median(runs) for runs in times.values())
        ratios[name] = GOAL_S / median
        runs = times["as is"]
        print(
            f"{name:<10} median {median:.2f} s (min {min(runs):.2f}, max {max(runs):.2f}); "
            f"with RUNNER_TCMALLOC=0 {without:.2f} s: the tcmalloc re-execution adds {median - without:+.2f} s"
        )
    for name, ratio in ratios.items():
        print(f"ratio goal/actual {name}: {ratio:.2f}x ({'meets' if ratio >= 1 else 'misses'} the {GOAL_S:.0f} s goal)")


if __name__ == "__main__":
    main()
