"""tcmalloc under the CPU build of vLLM, as vLLM itself sets it up.

vLLM's CPU platform puts tcmalloc (and PyTorch's libgomp) in `LD_PRELOAD` for its engine-core process, and
its worker warns when tcmalloc is missing. On the CPU build the runner keeps the engine core inside the job's
own process (`cpu_env` in conf/engine/auto.yaml), so that preload never happens: every allocation goes to glibc's
malloc, whose main arena keeps the freed, odd-sized blocks of a multiple-choice pass (about 0.2 GiB more than
tcmalloc on 10,000 requests; docs/benchmarks.md). An allocator is chosen when a process starts, so
`python -m runner` re-executes itself, once, with tcmalloc preloaded: same process id, arguments and
standard streams, before anything heavy is imported.

`RUNNER_TCMALLOC=0` keeps glibc's malloc. Without tcmalloc on the machine (Debian's `libtcmalloc-minimal4`,
which `make model` installs as root) the job runs as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from runner.machine.vllm_build import cpu_build

OPT_OUT = "RUNNER_TCMALLOC"
# Where distributions put gperftools' tcmalloc (Debian/Ubuntu, Fedora/RHEL, Arch/Alpine); vLLM's own bundled copy,
# where a wheel ships one, is looked for beside the package (vllm/libs).
SYSTEM_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
# tcmalloc reports every allocation over 1 GiB on stderr (the KV cache is one); a job's console is not the place.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 62)}


def find_tcmalloc() -> Path | None:
    """The first tcmalloc found: vLLM's bundled copy, then the system's."""
    from importlib.util import find_spec

    spec = find_spec("vllm")  # finds the package without importing it
    dirs = [Path(p) / "libs" for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in [*dirs, *map(Path, SYSTEM_DIRS)]:
        for name in NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def preload_environment(environ: Mapping[str, str], library: Path | None, *, cpu: bool) -> dict[str, str] | None:
    """The environment to re-execute with, or None to go on as is: already preloaded, opted out, not the CPU
    build, not Linux, or no tcmalloc here."""
    preload = environ.get("LD_PRELOAD", "")
    if library is None or not cpu or not sys.platform.startswith("linux"):
        return None
    if "libtcmalloc" in preload or environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return {**QUIET, **environ, "LD_PRELOAD": ":".join(filter(None, [str(library), preload]))}


def preload_tcmalloc() -> None:
    """Re-execute this command with tcmalloc preloaded where `preload_environment` says so; returns otherwise."""
    if "libtcmalloc" in os.environ.get("LD_PRELOAD", "") or not cpu_build():  # the cheap checks first
        return
    environ = preload_environment(os.environ, find_tcmalloc(), cpu=True)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def allocator() -> str:
    """Which malloc this process runs on: `tcmalloc` when it is mapped in, else `system` (glibc's, on Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "libtcmalloc" in maps else "system"


if __name__ == "__main__":  # `python -m runner.machine.allocator` (make tcmalloc): the tcmalloc found, or exit 1
    found = find_tcmalloc()
    print(found or "no tcmalloc found")
    raise SystemExit(found is None)
