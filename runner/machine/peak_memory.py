"""Measurements taken around a job: peak host memory and peak GPU memory over the whole process tree.

vLLM can run its engine core and its workers in child processes, so the runner's own numbers say
little: the samplers sum over this process and all its descendants. GPU memory comes from NVML's
per-process accounting (what `nvidia-smi` shows), so it includes each process's CUDA context.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Self

import psutil


def process_tree() -> list[psutil.Process]:
    root = psutil.Process()
    return [root, *root.children(recursive=True)]


class _Sampler:
    """Calls `sample()` every `interval_s` in a daemon thread between __enter__ and __exit__."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def sample(self) -> int:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def own_peak_rss() -> int:
    """This process's peak resident memory so far, in bytes, as the kernel keeps it.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss, which also keeps the peak of the image `exec`
    replaced: a runner started by a large process (a test session, a launcher) would report its parent's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class PeakRSS(_Sampler):
    """The largest sum of resident memory over the process tree seen once every `interval_s`, or this
    process's own peak where it rose inside the window: the kernel keeps that one exactly, so a spike of
    this process between two samples (vLLM's in-process engine on the CPU build) is not missed. Sampling
    can then be rare: listing the tree reads every process in /proc (~1.3 ms, in the engine's process)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__(interval_s)
        self._own_before = own_peak_rss()  # what an earlier job of this process (a sweep) reached

    def sample(self) -> int:
        total = 0
        for proc in process_tree():
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that exited between listing and reading
        own = own_peak_rss()
        self.peak_bytes = max(self.peak_bytes, total, own if own > self._own_before else 0)
        return total


def nvml_process_memory() -> dict[int, int] | None:
    """pid -> GPU bytes used, over all GPUs, from NVML; None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no bindings or no driver: nothing to measure
        return None
    try:
        used: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used[proc.pid] = used.get(proc.pid, 0) + (proc.usedGpuMemory or 0)
        return used
    finally:
        pynvml.nvmlShutdown()


class PeakGPUMemory(_Sampler):
    """Peak GPU memory of this process tree; `available` is False where NVML cannot be read."""

    def __init__(self, interval_s: float = 0.5, query: Callable[[], dict[int, int] | None] = nvml_process_memory):
        super().__init__(interval_s)
        self._query = query
        self.available = query() is not None

    def sample(self) -> int:
        if not self.available:
            return 0
        used = self._query() or {}
        pids = {p.pid for p in process_tree()}
        total = sum(bytes_ for pid, bytes_ in used.items() if pid in pids)
        self.peak_bytes = max(self.peak_bytes, total)
        return total
