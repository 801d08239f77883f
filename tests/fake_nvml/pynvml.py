"""A stand-in for nvidia-ml-py's `pynvml`, driven by the FAKE_NVML environment variable (JSON).

Put this folder first on sys.path (PYTHONPATH=tests/fake_nvml, or `sys.modules["pynvml"]`) and the
runner's hardware detection, doctor and telemetry see the GPUs described, on a machine without any:

    FAKE_NVML='{"driver": "580.95.05", "cuda": 13000,
                "gpus": [{"name": "NVIDIA H100 80GB HBM3", "total_gib": 80, "used_gib": 0.5,
                          "processes": [[4242, 70.5]]}]}'

Each GPU gets a stable UUID (GPU-00000000-0000-0000-0000-00000000000<i>) unless one is given. Without
FAKE_NVML (or with "gpus" absent and "error" set) nvmlInit fails as it does without a driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

GiB = 1024**3
_state: dict = {}


class NVMLError(Exception):
    pass


def _spec() -> dict:
    raw = os.environ.get("FAKE_NVML")
    if not raw:
        raise NVMLError("Driver Not Loaded")
    spec = json.loads(raw)
    if spec.get("error"):
        raise NVMLError(spec["error"])
    return spec


def nvmlInit() -> None:
    _state["spec"] = _spec()


def nvmlShutdown() -> None:
    _state.pop("spec", None)


def _gpus() -> list[dict]:
    if "spec" not in _state:
        raise NVMLError("Uninitialized")
    return _state["spec"].get("gpus", [])


def nvmlSystemGetDriverVersion() -> str:
    return _state["spec"].get("driver", "580.95.05")


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_state["spec"].get("cuda", 13000))


nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetHandleByUUID(uuid: str) -> int:
    for index in range(len(_gpus())):
        if nvmlDeviceGetUUID(index) == (uuid.decode() if isinstance(uuid, bytes) else uuid):
            return index
    raise NVMLError("Not Found")


def nvmlDeviceGetIndex(handle: int) -> int:
    return handle


def nvmlDeviceGetName(handle: int) -> str:
    return _gpus()[handle].get("name", "NVIDIA H100 80GB HBM3")


def nvmlDeviceGetUUID(handle: int) -> str:
    return _gpus()[handle].get("uuid", f"GPU-00000000-0000-0000-0000-{handle:012d}")


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    gpu = _gpus()[handle]
    total = int(gpu.get("total_gib", 80) * GiB)
    used = int(gpu.get("used_gib", sum(p[1] for p in gpu.get("processes", [])) + 0.5) * GiB)
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    processes = _gpus()[handle].get("processes", [])
    return [SimpleNamespace(pid=int(pid), usedGpuMemory=int(gib * GiB)) for pid, gib in processes]


def nvmlDeviceGetCudaComputeCapability(handle: int) -> tuple[int, int]:
    return tuple(_gpus()[handle].get("capability", (9, 0)))


# What MLflow's system-metrics GPU monitor samples: an idle card.
def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=0, memory=0)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return 70_000  # milliwatts


def nvmlDeviceGetEnforcedPowerLimit(handle: int) -> int:
    return 700_000
