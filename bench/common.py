"""What benchmarks share: the machine they ran on, two sides' medians and their ratio, and the environment of
a job they start with a `sitecustomize` hook."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def machine() -> str:
    """`machine: x86_64, 2 CPUs, Python 3.12.3` (the CPUs this process may run on, not the host's)."""
    return f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}"


def side_by_side(times: dict[str, list[float]], tokens: dict[str, int], base: str, measured: str) -> float:
    """Print each side's median seconds (with every round) and output tok/s; return base/measured time,
    i.e. how fast the measured side is relative to the base (1.0 = as fast)."""
    for name in (base, measured):
        median = statistics.median(times[name])
        runs = [round(t, 2) for t in times[name]]
        print(f"{name:<7} median {median:.2f} s of {runs}, {tokens[name] / median:.1f} output tok/s")
    return statistics.median(times[base]) / statistics.median(times[measured])


def hooked_job_env(hooks: Path) -> dict[str, str]:
    """This environment for a `python -m runner` job that loads `hooks/sitecustomize.py`: offline, no inherited
    store or cluster address, MLflow's telemetry off, `hooks` first on PYTHONPATH."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return inherited | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
    }
