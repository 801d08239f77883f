"""Write requirements/gpu.lock's header: how it was made, and every pin that differs from cpu.lock and why.

    python scripts/lock_header.py RESOLVED_GPU_LOCK > requirements/gpu.lock

RESOLVED_GPU_LOCK is uv's output (`--annotation-style line`, so each pin says which packages need it).
Shared packages were resolved with cpu.lock's versions as preferences, so a pin differs only where
the CUDA build's own requirements leave no other choice; the `# via` of such a pin names who forces it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)\s*(?:#\s*via\s+(.*))?$")

HEADER = """\
# The exact environment for NVIDIA machines (vLLM's CUDA build), installed with --no-deps.
# Resolved for Linux x86-64 (manylinux_2_28), CPython 3.11, from requirements/gpu.in by `make lock`:
#   uv pip compile requirements/gpu.in --python-platform x86_64-manylinux_2_28 --python-version 3.11
# with requirements/shared.constraints as preferences, so every package the CPU lock also has keeps
# its version wherever vllm (CUDA) allows. Checked by tests/test_gpu_lock.py.
# CUDA 13 build: needs NVIDIA driver 580 or newer (docs/gpu.md has the way for older drivers).
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """normalized name -> (version, who needs it) for each `name==version` line."""
    out = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            out[normalize(match[1])] = (match[2], (match[3] or "").strip())
    return out


def differences(gpu: Path, cpu: Path) -> list[str]:
    gpu_pins, cpu_pins = pins(gpu), pins(cpu)
    lines = []
    for name, (version, via) in sorted(gpu_pins.items()):
        if name not in cpu_pins:
            continue
        cpu_version = cpu_pins[name][0]
        if version == cpu_version:
            continue
        if name == "torch" and cpu_version.split("+")[0] == version:
            why = "the same release, CUDA build instead of the +cpu one"
        else:
            why = f"cpu.lock's version is refused by one of: {via}" if via else "no version shared by both builds"
        lines.append(f"#   {name}=={version} (cpu.lock: {cpu_version}): {why}")
    return lines


def main() -> None:
    resolved = Path(sys.argv[1])
    diff = differences(resolved, ROOT / "requirements" / "cpu.lock")
    body = [line for line in resolved.read_text().splitlines() if not line.startswith("#")]
    sys.stdout.write(HEADER)
    if diff:
        sys.stdout.write("# Pins that differ from cpu.lock, and why:\n" + "\n".join(diff) + "\n")
    sys.stdout.write("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
