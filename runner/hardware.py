"""What this machine has: GPUs (through NVML, torch as fallback), host memory and CPU cores.

`detect()` is the single place the runner looks at hardware, so tests can hand selection a
`Hardware` of their own instead (an 8×H100 box, a CPU-only laptop).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    host_memory_bytes: int = 0
    cpu_count: int = 1
    source: str = "none"  # where GPU facts came from: nvml | torch | none
    notes: tuple[str, ...] = field(default_factory=tuple)
    nodes: int = 1  # machines whose GPUs are listed in `gpus` (more than one only through a Ray cluster)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def gpus_per_node(self) -> int:
        return self.gpu_count // max(self.nodes, 1)

    def summary(self) -> str:
        if self.gpus:
            names = {g.name for g in self.gpus}
            gpu = f"{self.gpu_count}x {'/'.join(sorted(names))} ({self.gpus[0].total_bytes / GiB:.0f} GiB each)"
        else:
            gpu = "no GPU"
        return f"{gpu}, {self.cpu_count} CPU cores, {self.host_memory_bytes / GiB:.0f} GiB RAM"

    def as_dict(self) -> dict:
        return asdict(self)


def detect() -> Hardware:
    import psutil

    gpus, source, notes = _nvml_gpus()
    if source == "no-nvml-package":
        # Without the NVML bindings ask torch; with them, "no driver" is the answer and torch (slow to
        # import) would only say the same.
        gpus, source, more = _torch_gpus()
        notes += more
    return Hardware(
        gpus=tuple(gpus),
        host_memory_bytes=psutil.virtual_memory().total,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        source=source,
        notes=tuple(notes),
    )


def _nvml_gpus() -> tuple[list[GPU], str, list[str]]:
    try:
        import pynvml  # from the nvidia-ml-py package
    except ImportError:
        return [], "no-nvml-package", ["nvidia-ml-py is not installed"]
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver: the normal case on a CPU machine
        return [], "none", [f"NVML unavailable: {exc}"]
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPU(index, name.decode() if isinstance(name, bytes) else name, memory.total, memory.free))
        return gpus, "nvml", []
    finally:
        pynvml.nvmlShutdown()


def _torch_gpus() -> tuple[list[GPU], str, list[str]]:
    try:
        import torch
    except ImportError:
        return [], "none", []
    if not torch.cuda.is_available():
        return [], "none", []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GPU(index, torch.cuda.get_device_name(index), total, free))
    return gpus, "torch", []
