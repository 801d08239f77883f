"""Running programs in the sandbox from the caller's side: limits, spawning, output, deadline, kill.

One run: write the program with its success marker, lease a uid, ask the fork server for a
supervised run, read stdout/stderr up to the cap until it ends or the hard deadline passes, kill
whatever is left, and turn what was reported into a SandboxResult.
"""

from __future__ import annotations

import math
import os
import secrets
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapters.sandbox._client import _SERVER
from adapters.sandbox._results import SandboxError, SandboxResult, _classify, _isolation, _parse_report, _tail
from adapters.sandbox._uids import _UIDS, _no_lease, _processes_of_uid

# Whether programs may run with less than the full isolation (sandbox.allow_weak_isolation=true in the runner),
# for the run_program calls not told otherwise: the code tasks' scoring, in the job's own process.
_WEAK_ISOLATION = {"allowed": False}

# Dirs any uid may write to: each gets a fresh private tmpfs inside the sandbox.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_KILL_GRACE_S = 5.0  # past the supervisor's own timeout, the caller kills the whole group itself
# The sandbox's own set-up before the program's exec (namespaces, mounts, privilege drop): milliseconds on an
# idle machine, seconds on a loaded one. It has its own deadline so that the program's timeout starts at exec.
SETUP_TIMEOUT_S = 60.0


def set_weak_isolation(allow: bool) -> None:
    """The runner's `sandbox.allow_weak_isolation`, for every later run_program not told otherwise (the code tasks'
    scoring, which lm-eval runs in the job's process): an argument, not an environment variable that every
    process the job starts would inherit."""
    _WEAK_ISOLATION["allowed"] = allow


def _mask_dirs() -> list[str]:
    homes = {"/root", "/home", os.path.expanduser("~")}
    return sorted(h for h in homes if h not in ("/", "") and os.path.isdir(h))


def _keep_dirs(python: str) -> list[str]:
    """What the program's interpreter needs to stay reachable when homes are hidden."""
    bins = {os.path.dirname(python), os.path.dirname(os.path.realpath(python))}
    paths = {sys.prefix, sys.base_prefix, sys.base_exec_prefix, *bins}
    ordered = sorted({os.path.realpath(p) for p in paths} | {os.path.abspath(p) for p in paths})
    # Outermost only: a bind of the prefix already brings its bin/ and lib/.
    return [p for p in ordered if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in ordered)]


def run_program(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: float | None = None,
    file_size_mb: int = 16,
    max_processes: int = 32,
    max_open_files: int = 256,
    tmp_mb: int = 64,
    max_output_bytes: int = 1 << 20,
    tail_chars: int = 4000,
    python: str | None = None,
    site_packages: bool = False,
    allow_weak_isolation: bool | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; passed only if it ran to its very end.

    A success marker (a fresh random token) is printed by a line appended after ``code``: exit code 0
    alone does not pass, so ``os._exit(0)``/``sys.exit(0)`` before the checks count as failures.
    ``python`` defaults to this interpreter, run isolated (``-I``) and, unless ``site_packages``,
    without site-packages (``-S``). Raises SandboxError only when no run could be attempted.
    """
    python = python or sys.executable
    if allow_weak_isolation is None:  # the runner sets it from sandbox.allow_weak_isolation for its code tasks
        allow_weak_isolation = _WEAK_ISOLATION["allowed"]
    marker = f"SANDBOX-OK-{secrets.token_hex(16)}"
    # Flushed first so the marker comes last; os.write so a replaced sys.stdout cannot swallow it.
    program = (
        f"{code}\n\nimport os as _sandbox_os, sys as _sandbox_sys\n"
        f"_sandbox_sys.stdout.flush()\n_sandbox_os.write(1, b'\\n{marker}\\n')\n"
    )
    limits: dict[str, float] = {
        "timeout": timeout_s,
        "cpu": max(1, math.ceil(cpu_s if cpu_s is not None else timeout_s)),
        "as": memory_mb << 20,
        "fsize": file_size_mb << 20,
        "nproc": max_processes,
        "nofile": max_open_files,
        "tmp_bytes": tmp_mb << 20,
    }
    with _UIDS.lease() if os.geteuid() == 0 else _no_lease() as uid:
        # Always under /tmp, which becomes the sandbox's private tmpfs: the program's only writable place.
        work = tempfile.mkdtemp(prefix="sbx-", dir="/tmp")
        try:
            Path(work, "prog.py").write_text(program, encoding="utf-8")
            if uid >= 0:
                os.chown(work, uid, uid)
            strict = not allow_weak_isolation
            return _run(work, uid, marker, python, site_packages, limits, max_output_bytes, tail_chars, strict)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(
    work: str,
    uid: int,
    marker: str,
    python: str,
    site_packages: bool,
    limits: dict[str, float],
    max_output_bytes: int,
    tail_chars: int,
    strict: bool,
) -> SandboxResult:
    args = [f"{k}={v}" for k, v in limits.items() if k != "nproc" or uid >= 0] + [f"setup={SETUP_TIMEOUT_S}"]
    args += ["strict=1"] if strict else []  # the program runs only with the full isolation (_server._REQUIRED)
    args += [f"uid={uid}", f"gid={uid}", f"work={work}"]
    args += [f"private={d}" for d in PRIVATE_DIRS] + [f"mask={d}" for d in _mask_dirs()]
    target = python if site_packages else os.path.realpath(python)
    args += [f"keep={d}" for d in _keep_dirs(target)]
    flags = ["-I"] if site_packages else ["-I", "-S"]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    start = time.monotonic()
    try:
        pid, pidfd = _SERVER.spawn([*args, "--", target, *flags, "prog.py"], [out_w, err_w, rep_w])
    except BaseException:
        for fd in (out_r, err_r, rep_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, rep_w):
            os.close(fd)
    pipes = _Pipes(out_r, err_r, rep_r, max_output_bytes)
    try:
        _collect(pidfd, pipes, start, limits["timeout"])
    finally:
        if pipes.exited_at is None:  # our deadline or an exception: the supervisor did not finish by itself
            _kill_run(pid, pidfd, uid)
        os.close(pidfd)
        pipes.close()  # every writer has exited or exec'd: what is still buffered in the report is read first
    duration = time.monotonic() - start
    rep = _parse_report(bytes(pipes.report))
    iso = _isolation(rep, uid)
    out, err = pipes.out, pipes.err
    status, returncode, reason = _classify(rep, out, err, pipes.over, marker, limits["timeout"], SETUP_TIMEOUT_S)
    return SandboxResult(status, returncode, _tail(out, tail_chars), _tail(err, tail_chars), duration, reason, iso)


class _Pipes:
    """A run's stdout, stderr and report pipes, read as they come: output up to the cap, the report whole."""

    def __init__(self, out_fd: int, err_fd: int, rep_fd: int, cap: int) -> None:
        self.bufs = {out_fd: bytearray(), err_fd: bytearray(), rep_fd: bytearray()}
        self.names = {out_fd: "stdout", err_fd: "stderr", rep_fd: "report"}
        self.out, self.err, self.report = (self.bufs[fd] for fd in (out_fd, err_fd, rep_fd))
        self.rep_fd, self.cap = rep_fd, cap
        self.open = {out_fd, err_fd, rep_fd}
        self.over: list[str] = []  # "stdout"/"stderr" past the cap; "setup_deadline"/"deadline" when ours passed
        self.exited_at: float | None = None  # when the supervisor exited (its pidfd turned readable)

    def read(self, fd: int) -> bool:
        """One read from ``fd``; True when it is done: at its end, or past the cap (then the caller closes
        our end, and the writer gets EPIPE instead of filling memory here)."""
        chunk = os.read(fd, 1 << 16)
        buf = self.bufs[fd]
        cap = self.cap if fd != self.rep_fd else 1 << 20
        buf += chunk[: cap + 1 - len(buf)]
        if len(buf) > cap:
            self.over.append(self.names[fd])
        return not chunk or len(buf) > cap

    def exec_seen(self) -> bool:
        return b"\nexec=1\n" in b"\n" + self.report

    def close_one(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def close(self) -> None:
        if self.rep_fd in self.open:  # never blocks: every writer has ended or exec'd (close-on-exec there)
            os.set_blocking(self.rep_fd, False)
            try:
                while not self.read(self.rep_fd):
                    pass
            except BlockingIOError:
                pass
        for fd in list(self.open):
            self.close_one(fd)


def _collect(pidfd: int, pipes: _Pipes, start: float, timeout_s: float) -> None:
    """Read the pipes until the supervisor exits (its pidfd turns readable) or our hard deadline passes.

    The deadline backs up the supervisor's own two: the set-up's, then, from the program's exec (its
    `exec=1` report line), the program's wall-clock timeout; each plus a grace for the supervisor to act.
    """
    deadline, running = start + SETUP_TIMEOUT_S + _KILL_GRACE_S, False
    with selectors.DefaultSelector() as sel:
        for fd in (*pipes.open, pidfd):
            sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if not running and pipes.exec_seen():
                deadline, running = now + timeout_s + _KILL_GRACE_S, True
            if pipes.exited_at is not None and (not pipes.open or now - pipes.exited_at > 1.0):
                break  # done; or a straggler outside the PID namespace still holds a pipe
            if now >= deadline:
                pipes.over.append("deadline" if running else "setup_deadline")
                break
            for key, _ in sel.select(timeout=min(0.5, deadline - now)):
                if key.fd == pidfd:
                    pipes.exited_at = time.monotonic()
                    sel.unregister(pidfd)
                elif pipes.read(key.fd):
                    sel.unregister(key.fd)
                    pipes.close_one(key.fd)


def _kill_run(pid: int, pidfd: int, uid: int) -> None:
    """Last resort when the supervisor overran its own timeout: kill it and everything of the run."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # race-free, unlike a bare pid
        os.killpg(pid, signal.SIGKILL)  # pgid == pid (setsid); still ours while the leader is unreaped
    except (ProcessLookupError, PermissionError):
        pass
    if uid >= 0:  # PDEATHSIG ends init and program; this catches anything that escaped both
        for victim in _processes_of_uid(uid):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass


def check_completions(programs: Sequence[str], *, max_workers: int | None = None, **limits: Any) -> list[SandboxResult]:
    """run_program() over many programs in parallel, results in input order.

    Threads only wait on subprocesses, so the pool size is the number of sandboxes at once.
    """
    if not programs:
        return []
    workers = max_workers or len(os.sched_getaffinity(0))
    if workers <= 1 or len(programs) == 1:
        return [run_program(p, **limits) for p in programs]
    with ThreadPoolExecutor(max_workers=min(workers, len(programs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: run_program(p, **limits), programs))


def probe() -> dict[str, Any]:
    """The isolation a run gets on this machine (runs a trivial program, allowed to run with less than the
    full isolation so that it can say what is missing: `missing_isolation(probe())`)."""
    result = run_program("pass", timeout_s=10, allow_weak_isolation=True)
    if result.status != "passed":
        raise SandboxError(f"sandbox probe failed: {result.status}: {result.reason} {result.stderr_tail}")
    return result.isolation


def missing_isolation(isolation: dict[str, Any]) -> list[str]:
    """What a run with this isolation (a result's `isolation`, or `probe()`) lacks of the full isolation,
    in words; [] when it has all of it. The same rule the server enforces before it runs a program."""
    from adapters.sandbox._server import _missing_isolation

    flags = ("net_ns", "pid_ns", "readonly_root", "uid_drop", "user_ns")
    return _missing_isolation({name: "1" if isolation.get(name) else "0" for name in flags})
