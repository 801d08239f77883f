"""Does the NVIDIA driver fit the CUDA build that torch and vLLM were compiled for?

A CUDA 13 build of torch (what PyPI's vllm 0.32.0 brings) cannot use a GPU whose driver is older than
the 580 series: torch then reports no GPU, or vLLM fails deep in its start-up. The check compares the
CUDA version the installed builds need (read from their files, without importing torch) with the one
the driver supports (NVML), before anything loads: in `mode=doctor` and at the start of every GPU job.

Minimum Linux drivers per CUDA major version, with CUDA's minor-version compatibility (a 12.x build
runs on any 12.y driver from 525 on): NVIDIA's CUDA compatibility table.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from runner.machine.hardware import HardwareError
from runner.machine.vllm_build import installed_version

MIN_DRIVER = {13: 580, 12: 525, 11: 450}
FIX = (
    "Either update the NVIDIA driver to the {driver} series or newer, or install the CUDA 12.9 build of vLLM "
    "and torch, which runs on drivers from 525 on: `rm -rf .venv && make venv FLAVOR=gpu GPU_CUDA=12.9` (docs/gpu.md)."
)


class DriverError(HardwareError):
    """The driver is too old for the CUDA build installed; raised before anything loads."""


@dataclass(frozen=True)
class Driver:
    version: str  # e.g. 550.54.15
    cuda: str  # the newest CUDA it supports, e.g. 12.4


def driver() -> Driver | None:
    """The NVIDIA driver's version and its CUDA version (NVML); None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no bindings or no driver: nothing to compare with
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        text = version.decode() if isinstance(version, bytes) else version
        return Driver(text, f"{cuda // 1000}.{cuda % 1000 // 10}")
    finally:
        pynvml.nvmlShutdown()


def torch_cuda() -> str | None:
    """The CUDA version torch was built for ('13.0'), read from torch/version.py; None for a CPU build."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    text = path.read_text() if path.exists() else ""
    match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", text, re.MULTILINE)  # cuda: ... = '13.0'
    return match[1] if match else None


def vllm_cuda() -> str | None:
    """The CUDA version of vLLM's build where its version says so (`0.32.0+cu129` -> '12.9')."""
    version = installed_version("vllm")
    if version is None:
        return None
    match = re.search(r"\+cu(\d+)(\d)$", version)
    return f"{match[1]}.{match[2]}" if match else None


def needed_cuda() -> tuple[str, str] | None:
    """(CUDA version, which build needs it): the newest any installed GPU build needs; None for CPU builds."""
    found = [(v, who) for v, who in ((torch_cuda(), "torch"), (vllm_cuda(), "vllm")) if v]
    return max(found, key=lambda item: _major_minor(item[0])) if found else None


def _major_minor(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def problem(runtime: str, who: str, found: Driver) -> str | None:
    """One paragraph when the driver cannot run a CUDA `runtime` build; None when it can."""
    major, _ = _major_minor(runtime)
    minimum = MIN_DRIVER.get(major)
    driver_major = int(found.version.split(".")[0])
    if _major_minor(found.cuda)[0] >= major and (minimum is None or driver_major >= minimum):
        return None
    build = f"{who} {_installed(who)}"
    need = f"NVIDIA driver {minimum} or newer" if minimum else f"a driver that supports CUDA {major}"
    return (
        f"The installed {build} is built for CUDA {runtime}, which needs {need}; this machine's driver is "
        f"{found.version} (supports CUDA {found.cuda} at most), so the GPU cannot be used. "
        + FIX.format(driver=minimum or major)
    )


def _installed(dist: str) -> str:
    return installed_version(dist) or "(not installed)"


def require_compatible() -> None:
    """At the start of a GPU job: stop with one paragraph when the driver is too old for the build."""
    runtime, found = needed_cuda(), driver()
    if runtime and found:
        message = problem(runtime[0], runtime[1], found)
        if message:
            raise DriverError(message)
