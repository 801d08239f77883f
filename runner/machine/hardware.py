"""What this machine has: GPUs (through NVML, torch as fallback), host memory and CPU cores.

`detect()` is the single place the runner looks at hardware, so tests can hand selection a
`Hardware` of their own instead (an 8×H100 box, a CPU-only laptop), or fake NVML itself.

NVML lists every GPU of the machine whatever `CUDA_VISIBLE_DEVICES` says; CUDA, vLLM and torch see
only the ones it names. `detect()` applies the same mask (indices or UUIDs, in NVML's PCI-bus order as
with `CUDA_DEVICE_ORDER=PCI_BUS_ID`; an empty value means no GPU), so selection, replicas and the plan
work with the GPUs this process may use. Each GPU keeps the identifier that pins an engine process to
it (`device_id`: its UUID where NVML gives one), and the memory other processes hold on it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

GiB = 1024**3


class HardwareError(ValueError):
    """What was asked for does not match the machine (a device mask naming missing GPUs)."""


class SelectionError(HardwareError):
    """The model cannot run on what was found (runner/engines/selection.py); raised before anything is loaded."""


@dataclass(frozen=True)
class GPUProcess:
    pid: int
    used_bytes: int
    name: str = ""  # the command, where this user may read it


@dataclass(frozen=True)
class GPU:
    index: int  # as CUDA numbers it inside this process (after CUDA_VISIBLE_DEVICES)
    name: str
    total_bytes: int
    free_bytes: int
    device_id: str = ""  # what CUDA_VISIBLE_DEVICES names it by: UUID from NVML, else the physical index
    physical_index: int | None = None  # NVML's index (PCI-bus order)
    processes: tuple[GPUProcess, ...] = ()  # compute processes holding memory on it (NVML; all users)

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    def usage(self) -> str:
        """'GPU 3 (NVIDIA H100 80GB HBM3): 71.2 of 79.6 GiB in use by pid 4242 (python) 70.5 GiB'."""
        where = f"GPU {self.physical_index if self.physical_index is not None else self.index} ({self.name})"
        text = f"{where}: {self.used_bytes / GiB:.1f} of {self.total_bytes / GiB:.1f} GiB in use"
        if self.processes:
            by = ", ".join(
                f"pid {p.pid}{f' ({p.name})' if p.name else ''} {p.used_bytes / GiB:.1f} GiB" for p in self.processes
            )
            text += f" by {by}"
        return text


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    host_memory_bytes: int = 0
    cpu_count: int = 1
    source: str = "none"  # where GPU facts came from: nvml | torch | ray | none
    notes: tuple[str, ...] = field(default_factory=tuple)
    nodes: int = 1  # machines whose GPUs are listed in `gpus` (more than one only through a Ray cluster)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as detection found it (None: unset)

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
            if self.visible_devices is not None:
                gpu += f" [CUDA_VISIBLE_DEVICES={self.visible_devices}]"
        else:
            gpu = "no GPU" + (" [CUDA_VISIBLE_DEVICES is empty]" if self.visible_devices == "" else "")
        return f"{gpu}, {self.cpu_count} CPU cores, {self.host_memory_bytes / GiB:.0f} GiB RAM"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect(apply_visible_devices: bool = True) -> Hardware:
    import psutil

    mask = os.environ.get("CUDA_VISIBLE_DEVICES") if apply_visible_devices else None
    gpus, source, notes = _nvml_gpus()
    if source == "no-nvml-package":
        # Without the NVML bindings ask torch (which applies the mask itself); with them, "no driver" is
        # the answer and torch (slow to import) would only say the same.
        gpus, source, more = _torch_gpus(mask)
        notes += more
    else:
        gpus = apply_mask(gpus, mask)
    return Hardware(
        gpus=tuple(gpus),
        host_memory_bytes=psutil.virtual_memory().total,
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        source=source,
        notes=tuple(notes),
        visible_devices=mask,
    )


def apply_mask(gpus: list[GPU], mask: str | None) -> list[GPU]:
    """The GPUs `CUDA_VISIBLE_DEVICES` lets this process use, renumbered as CUDA numbers them.

    Entries are physical indices or UUIDs (`GPU-…`, a unique prefix is enough, as for CUDA). Where CUDA
    silently ignores an entry it cannot match (and every entry after it), the runner refuses: a job meant
    for GPU 3 must not spread over the others or fall back to the CPU without a word.
    """
    if mask is None:
        return gpus
    entries = [e.strip() for e in mask.split(",")]
    if entries == [""]:
        return []
    chosen: list[GPU] = []
    for entry in entries:
        found = _match(gpus, entry)
        if found is None or found in chosen:
            listed = ", ".join(f"{g.physical_index} = {g.device_id}" for g in gpus) or "none"
            why = "names the same GPU twice" if found is not None else f"names {entry!r}, which is no GPU here"
            raise HardwareError(
                f"CUDA_VISIBLE_DEVICES={mask} {why}. This machine's GPUs (NVML index = UUID): {listed}. "
                "Name GPUs by index or UUID, each once, or unset CUDA_VISIBLE_DEVICES to use them all "
                "(an empty value means no GPU)."
            )
        chosen.append(found)
    return [
        GPU(i, g.name, g.total_bytes, g.free_bytes, g.device_id, g.physical_index, g.processes)
        for i, g in enumerate(chosen)
    ]


def _match(gpus: list[GPU], entry: str) -> GPU | None:
    if entry.isdigit():
        return next((g for g in gpus if g.physical_index == int(entry)), None)
    if entry.startswith("GPU-"):
        hits = [g for g in gpus if g.device_id.startswith(entry)]
        return hits[0] if len(hits) == 1 else None
    return None  # MIG-… and anything else: not something the runner can place work on


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPU(
                    index,
                    _text(pynvml.nvmlDeviceGetName(handle)),
                    memory.total,
                    memory.free,
                    device_id=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    physical_index=index,
                    processes=_processes(pynvml, handle),
                )
            )
        return gpus, "nvml", []
    finally:
        pynvml.nvmlShutdown()


def _processes(pynvml: ModuleType, handle: object) -> tuple[GPUProcess, ...]:
    """Who holds memory on this GPU; empty where NVML will not say (some containers, MIG)."""
    import psutil

    try:
        found = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return ()
    out = []
    for proc in found:
        try:
            name = psutil.Process(proc.pid).name()
        except (psutil.Error, OSError):
            name = ""  # another user's process, or one in another PID namespace
        out.append(GPUProcess(proc.pid, int(proc.usedGpuMemory or 0), name))
    return tuple(out)


def _torch_gpus(mask: str | None) -> tuple[list[GPU], str, list[str]]:
    try:
        import torch
    except ImportError:
        return [], "none", []
    if not torch.cuda.is_available():
        return [], "none", []
    # torch numbers GPUs after the mask; pinning must name them as the mask does.
    names = [e.strip() for e in mask.split(",")] if mask else []
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        pin = names[index] if index < len(names) else str(index)
        gpus.append(GPU(index, torch.cuda.get_device_name(index), total, free, device_id=pin))
    return gpus, "torch", []
