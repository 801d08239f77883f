"""Memory samplers over the whole process tree (children included), as vLLM's workers are children."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import PROJECT_ROOT

from runner.machine.peak_memory import PeakGPUMemory, PeakRSS


def test_peak_rss_counts_child_processes():
    # The samplers read the tree on entry and on exit: those readings alone are compared (no timed sampling).
    with PeakRSS(interval_s=3600) as alone:
        pass
    # The child says when its 300 MiB are written (bytearray zeroes every page), then holds them until killed.
    holds = "import sys; b = bytearray(300 * 2**20); print('held', flush=True); sys.stdin.read()"
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen([sys.executable, "-c", holds], **pipes) as child:
        try:
            assert child.stdout.readline() == "held\n"  # "" if the child died first: no hang
            with PeakRSS(interval_s=3600) as with_child:
                pass
        finally:
            child.kill()
    assert with_child.peak_bytes - alone.peak_bytes > 250 * 2**20


def test_a_spike_of_this_process_between_two_samples_is_in_the_peak():
    # A fresh process started by this (large) test process: its peak must be its own, not the parent's,
    # and the kernel's peak counts only when it rose inside the window.
    script = (
        "from runner.machine.peak_memory import PeakRSS\n"
        "with PeakRSS(interval_s=3600) as rss:\n"
        "    before = rss.peak_bytes\n"
        "    spike = b'x' * (400 * 2**20)  # every page written\n"
        "    del spike\n"
        "print(rss.peak_bytes - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert int(out.stdout) > 350 * 2**20


def test_gpu_peak_sums_this_process_tree_and_ignores_other_processes():
    me = os.getpid()
    # The first reading answers the availability check; then entry, the explicit sample, and exit.
    readings = iter([{}, {me: 1 << 30, 999999: 50 << 30}, {me: 3 << 30}, {me: 2 << 30}])
    sampler = PeakGPUMemory(interval_s=60, query=lambda: next(readings, {}))
    with sampler:
        sampler.sample()
    assert sampler.available and sampler.peak_bytes == 3 << 30  # never the other process's 50 GiB


def test_gpu_sampler_is_a_no_op_without_nvml():
    sampler = PeakGPUMemory(interval_s=60, query=lambda: None)
    with sampler:
        pass
    assert not sampler.available and sampler.peak_bytes == 0
