"""Run untrusted Python (model-written code) in a separate, resource-limited, isolated process.

Never executes the code in the caller's process. The caller starts one long-lived *server* (this
file, ``python -I -S sandbox.py --server FD``, as the caller's user) and asks it over a socketpair
for each run; the server forks a per-run *supervisor*:

    caller --socketpair--> server --fork--> supervisor --fork--> init --fork--> program
                                                                           (execv python -I -S prog.py)

The supervisor enters fresh network/mount/PID/IPC/UTS namespaces where the OS allows it, forks the
init (PID 1 of the new PID namespace: when it ends, every process in there ends) and enforces the
wall-clock timeout. The init privatises /tmp, /var/tmp, /dev/shm and /run/lock, hides home
directories and reaps orphans; the program's process sets the rlimits and no_new_privs, drops root
to a per-run unprivileged uid and execs a fresh interpreter on the program file. What was applied
is reported to the caller over a private pipe. Forking from a warm server instead of starting a
Python supervisor per run halves the cost of a check. See docs/sandbox.md for the guarantees.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import math
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# --------------------------------------------------------------------------- server / supervisor side

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_NAMESPACES = {"net_ns": _CLONE_NEWNET, "mount_ns": _CLONE_NEWNS, "pid_ns": _CLONE_NEWPID,
               "ipc_ns": _CLONE_NEWIPC, "uts_ns": _CLONE_NEWUTS}  # fmt: skip
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SIGKILL = 9


class _Report:
    """key=value lines to the caller over an inherited pipe (closed on exec, so the program never sees it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, key: str, value: object) -> None:
        text = str(value).replace("\n", " ")
        os.write(self.fd, f"{key}={text}\n".encode())


def _libc_call(libc, name: str, *args) -> None:
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _parse_supervisor_args(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    split = argv.index("--")
    opts: dict[str, list[str]] = {}
    for item in argv[:split]:
        key, _, value = item.partition("=")
        opts.setdefault(key, []).append(value)
    return opts, argv[split + 1 :]


def _enter_namespaces(libc, report: _Report, uid_drop: bool) -> dict[str, bool]:
    """unshare() what the OS permits; one flag at a time after a combined failure, to report each."""
    applied = dict.fromkeys(_NAMESPACES, False)
    if not uid_drop and os.geteuid() != 0:
        # Unprivileged caller: a user namespace (where allowed) grants the capabilities for the rest.
        uid, gid = os.getuid(), os.getgid()
        try:
            _libc_call(libc, "unshare", _CLONE_NEWUSER)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
            report("user_ns", 1)
        except OSError as exc:
            report("user_ns", 0)
            report("note", f"user namespace unavailable ({exc.strerror}): no namespaces without root")
            return applied
    everything = sum(_NAMESPACES.values())
    try:
        _libc_call(libc, "unshare", everything)
        return dict.fromkeys(_NAMESPACES, True)
    except OSError as exc:
        report("note", f"unshare(all) failed: {exc.strerror}; trying one at a time")
    for name, flag in _NAMESPACES.items():
        try:
            _libc_call(libc, "unshare", flag)
            applied[name] = True
        except OSError:
            pass
    return applied


def _private_mounts(libc, opts: dict[str, list[str]], work: str, pid_ns: bool, report: _Report) -> str:
    """Fresh tmpfs over the world-writable dirs and the home dirs; the work dir moves into the private /tmp.

    Returns the work dir path to chdir into. The interpreter's prefix is bound back read-only in place
    when it lives under a hidden home (pyenv installs do).
    """
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def do_mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
        _libc_call(libc, "mount", enc[0], enc[1], enc[2], flags, enc[3])

    do_mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks back to the host
    # The program file, read before /tmp disappears under the new tmpfs.
    files = {}
    for name in os.listdir(work):
        with open(os.path.join(work, name), "rb") as fh:
            files[name] = fh.read()
    keep_fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in opts.get("keep", []) if os.path.isdir(path)}
    hidden: list[str] = []
    tmp_size = opts["tmp_bytes"][0]
    for path in opts.get("private", []):
        if os.path.isdir(path) and not os.path.islink(path):
            do_mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmp_size},mode=1777")
            hidden.append(path)
    for path in opts.get("mask", []):
        if os.path.isdir(path) and not os.path.islink(path):
            # 711: the interpreter bound back below stays reachable, the listing does not.
            do_mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=711")
            hidden.append(path)
    os.umask(0o022)
    for path, fd in keep_fds.items():
        if any(path == h or path.startswith(h.rstrip("/") + "/") for h in hidden):
            os.makedirs(path, 0o755, exist_ok=True)
            do_mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            # A bind mount takes the source's flags; a second pass makes it read-only.
            do_mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        os.close(fd)
    if pid_ns:  # a /proc that shows only this sandbox's processes
        do_mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    report("readonly_root", int(_readonly_everything_else(do_mount, hidden)))
    report("private_tmp", ",".join(p for p in opts.get("private", []) if p in hidden))
    report("masked", ",".join(p for p in opts.get("mask", []) if p in hidden))
    if not any(work == h or work.startswith(h.rstrip("/") + "/") for h in hidden):
        return work
    # The work dir is under a fresh tmpfs now: recreate it there (size-bounded, gone with the namespace).
    os.makedirs(work, 0o700, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(work, name), "wb") as fh:
            fh.write(data)
    report("work_on_tmpfs", 1)
    return work


def _readonly_everything_else(do_mount, writable: list[str]) -> bool:
    """Remount every filesystem read-only inside the sandbox, except its private tmpfs dirs.

    Defence in depth under the uid drop: even a program that kept root (a broken drop) cannot change
    a file outside its own tmpfs. / is first bound onto itself so it can be remounted read-only.
    """
    skip = ("/proc", "/sys", "/dev")
    try:
        do_mount("/", "/", None, _MS_BIND | _MS_REC)
        with open("/proc/self/mounts") as fh:
            points = {line.split()[1].replace("\\040", " ") for line in fh}
        for point in sorted(points, key=len):
            if point in writable or point.startswith(skip) or point.startswith(tuple(w + "/" for w in writable)):
                continue
            try:
                do_mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            except OSError:
                if point == "/":
                    raise
        return True
    except OSError:
        return False


def _set_rlimits(opts: dict[str, list[str]], report: _Report) -> None:
    import resource  # a builtin extension: cheap

    limits = {
        "RLIMIT_CPU": (int(opts["cpu"][0]), int(opts["cpu"][0]) + 1),  # SIGXCPU, then SIGKILL a second later
        "RLIMIT_AS": (int(opts["as"][0]),) * 2,
        "RLIMIT_FSIZE": (int(opts["fsize"][0]),) * 2,
        "RLIMIT_NOFILE": (int(opts["nofile"][0]),) * 2,
        "RLIMIT_CORE": (0, 0),
    }
    if "nproc" in opts:  # only with a uid of its own: the count is per real uid, system-wide
        limits["RLIMIT_NPROC"] = (int(opts["nproc"][0]),) * 2
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), value)
    report("rlimits", ",".join(f"{k[7:].lower()}:{v[0]}" for k, v in limits.items()))


def _drop_privileges(uid: int, gid: int, report: _Report) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # Verify rather than trust: every id changed and root cannot be regained.
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise OSError("privilege drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("could regain uid 0 after the drop")
    report("uid_drop", 1)
    report("uid", uid)


def _child(libc, opts: dict[str, list[str]], cmd: list[str], ns: dict[str, bool], report: _Report) -> None:
    """Set up the sandbox, then stay as its init while the program runs in a grandchild; never returns.

    The program must not be PID 1 of its namespace: the kernel drops default-action signals to that
    init, so SIGXCPU (the CPU limit) or a self-sent SIGTERM would not end it.
    """
    try:
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # the supervisor dies -> the whole sandbox dies
        work = opts["work"][0]
        if ns["mount_ns"]:
            work = _private_mounts(libc, opts, work, ns["pid_ns"], report)
        program = os.fork()
    except BaseException as exc:  # noqa: B036 - anything here is a setup failure to report, never a run
        report("error", f"{type(exc).__name__}: {exc}")
        os._exit(126)
    if program == 0:
        _exec_program(libc, opts, cmd, work, report)
    # Reap whatever gets reparented here until the program itself ends; leaving then takes the
    # rest of the PID namespace down with us.
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            break
    if os.WIFSIGNALED(status):
        report("signal", os.WTERMSIG(status))
    else:
        report("exit", os.WEXITSTATUS(status))
    os._exit(0)


def _exec_program(libc, opts: dict[str, list[str]], cmd: list[str], work: str, report: _Report) -> None:
    try:
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        uid, gid = int(opts["uid"][0]), int(opts["gid"][0])
        _set_rlimits(opts, report)
        if uid >= 0:
            os.chown(work, uid, gid)
        os.chdir(work)
        _libc_call(libc, "prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot regain privileges
        report("no_new_privs", 1)
        if uid >= 0:
            _drop_privileges(uid, gid, report)
        report("exec", 1)
        os.execv(cmd[0], cmd)
    except BaseException as exc:  # noqa: B036 - anything here is a setup failure to report, never a run
        report("error", f"{type(exc).__name__}: {exc}")
        os._exit(126)


def _sweep_uid(uid: int) -> None:
    """Kill every process left with the sandbox's uid (escaped its process group, no PID namespace).

    kill(-1) from that uid reaches exactly those processes; it runs in a forked helper so the
    supervisor itself stays root. Repeated if a survivor killed the helper first.
    """
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                try:
                    os.kill(-1, _SIGKILL)
                except ProcessLookupError:
                    pass
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            return


def _supervise(libc, argv: list[str], report: _Report) -> int:
    import select

    opts, cmd = _parse_supervisor_args(argv)
    uid = int(opts["uid"][0])
    ns = _enter_namespaces(libc, report, uid_drop=uid >= 0)
    for name, applied in ns.items():
        report(name, int(applied))
    timeout = float(opts["timeout"][0])
    child = os.fork()
    if child == 0:
        _child(libc, opts, cmd, ns, report)
    pidfd = os.pidfd_open(child)
    ready, _, _ = select.select([pidfd], [], [], timeout)
    if not ready:
        os.kill(child, _SIGKILL)  # in a PID namespace this kills every process in it
        report("timeout", 1)
    _, status = os.waitpid(child, 0)
    if uid >= 0 and not ns["pid_ns"]:
        _sweep_uid(uid)
        report("swept", 1)
    # The program's own status was reported by the init; this one only tells the init's fate.
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _serve(sock_fd: int) -> None:
    """Fork one supervisor per request; end when the caller's end of the socketpair closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(fileno=sock_fd)
    server = os.getpid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # results travel over the report pipe: let the kernel reap
    while True:
        try:
            payload, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        except OSError:
            return
        if not payload or len(fds) != 3:
            return
        pid = os.fork()
        if pid == 0:
            code = 125
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)  # the server dies -> this run dies
                if os.getppid() == server:
                    os.setsid()  # a process group of its own
                    stdin = os.open(os.devnull, os.O_RDONLY)
                    for target, fd in ((0, stdin), (1, fds[0]), (2, fds[1])):
                        os.dup2(fd, target)
                        os.close(fd)
                    os.set_inheritable(fds[2], False)  # the program must never get the report pipe
                    code = _supervise(libc, payload.decode().split("\0"), _Report(fds[2]))
            finally:
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
            socket.send_fds(sock, [str(pid).encode()], [pidfd])
            os.close(pidfd)
        except OSError:
            return
        finally:
            for fd in fds:
                os.close(fd)


# --------------------------------------------------------------------------- caller side

Status = Literal["passed", "failed", "timeout", "output_limit", "error"]

# One uid per concurrent run: RLIMIT_NPROC counts per real uid system-wide, and kill(-1) from the
# sandbox reaches every process of its uid, so runs sharing `nobody` could starve or kill each other.
# Unnamed uids in Debian's "global allocation" block, which nothing on these machines uses.
UID_RANGE = range(64000, 64256)
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Dirs any uid may write to: each gets a fresh private tmpfs inside the sandbox.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_KILL_GRACE_S = 5.0  # past the supervisor's own timeout, the caller kills the whole group itself


@dataclass(frozen=True)
class SandboxResult:
    status: Status
    returncode: int | None  # the program's exit code, or -signal; None when it never ran
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    reason: str = ""
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault)."""


class _UidPool:
    """Lease a uid no other run (in this or another process) is using; flock files make it cross-process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[int] = set()

    @contextmanager
    def lease(self) -> Iterator[int]:
        lock_dir = _private_dir() / "uids"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        fd = None
        uid = -1
        with self._lock:
            for candidate in UID_RANGE:
                if candidate in self._busy:
                    continue
                fd = os.open(lock_dir / str(candidate), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                uid = candidate
                self._busy.add(uid)
                break
        if uid < 0:
            raise SandboxError(f"all {len(UID_RANGE)} sandbox uids are in use")
        try:
            yield uid
        finally:
            with self._lock:
                self._busy.discard(uid)
            os.close(fd)  # releases the flock


_UIDS = _UidPool()


def _private_dir() -> Path:
    """A dir only this user can touch (it holds the uid lease locks)."""
    path = Path(tempfile.gettempdir()) / f"llm-eval-sandbox-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    # Someone else may have created it first in the shared /tmp: never trust such a dir.
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SandboxError(f"{path} is not a private directory of uid {os.geteuid()}")
    return path


class _Server:
    """The caller's end of the fork server: started on first use, restarted if it died, one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._owner = os.getpid()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), "--server", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                cwd="/", env=SANDBOX_ENV, start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        self._sock = ours

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # EOF: the server exits, its PDEATHSIG takes any running sandbox along
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

    def spawn(self, argv: list[str], fds: list[int]) -> tuple[int, int]:
        """Start one supervised run with stdout, stderr and report pipes; returns (pid, pidfd)."""
        payload = "\0".join(argv).encode()
        with self._lock:
            if self._owner != os.getpid():  # a forked copy of the caller: never share the parent's server
                self._sock, self._proc, self._owner = None, None, os.getpid()
            for _ in range(2):
                if self._sock is None:
                    self._start()
                assert self._sock is not None
                try:
                    socket.send_fds(self._sock, [payload], fds)
                    reply, pidfds, _, _ = socket.recv_fds(self._sock, 64, 1)
                    if reply and pidfds:
                        return int(reply), pidfds[0]
                except OSError:
                    pass
                self.stop()  # dead or confused server: start a fresh one once
        raise SandboxError("the sandbox server does not answer")


_SERVER = _Server()
atexit.register(_SERVER.stop)


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


def _tail(data: bytes | bytearray, limit: int) -> str:
    return bytes(data[-limit:]).decode("utf-8", errors="replace")


def _parse_report(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        out[key] = f"{out[key]}; {value}" if key in out and key in ("note", "error") else value
    return out


def _isolation(rep: dict[str, str], uid: int) -> dict[str, Any]:
    iso: dict[str, Any] = {name: rep.get(name) == "1" for name in ("user_ns", *_NAMESPACES)}
    iso["uid_drop"] = rep.get("uid_drop") == "1"
    iso["uid"] = int(rep["uid"]) if "uid" in rep else os.geteuid()
    iso["leased_uid"] = uid if uid >= 0 else None
    iso["no_new_privs"] = rep.get("no_new_privs") == "1"
    iso["readonly_root"] = rep.get("readonly_root") == "1"
    iso["private_tmp"] = [p for p in rep.get("private_tmp", "").split(",") if p]
    iso["masked"] = [p for p in rep.get("masked", "").split(",") if p]
    iso["rlimits"] = rep.get("rlimits", "")
    iso["swept"] = rep.get("swept") == "1"
    if "note" in rep:
        iso["notes"] = rep["note"]
    return iso


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
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; passed only if it ran to its very end.

    A success marker (a fresh random token) is printed by a line appended after ``code``: exit code 0
    alone does not pass, so ``os._exit(0)``/``sys.exit(0)`` before the checks count as failures.
    ``python`` defaults to this interpreter, run isolated (``-I``) and, unless ``site_packages``,
    without site-packages (``-S``). Raises SandboxError only when no run could be attempted.
    """
    python = python or sys.executable
    marker = f"SANDBOX-OK-{secrets.token_hex(16)}"
    # Flushed first so the marker comes last; os.write so a replaced sys.stdout cannot swallow it.
    program = (
        f"{code}\n\nimport os as _sandbox_os, sys as _sandbox_sys\n"
        f"_sandbox_sys.stdout.flush()\n_sandbox_os.write(1, b'\\n{marker}\\n')\n"
    )
    limits = {
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
            return _run(work, uid, marker, python, site_packages, limits, max_output_bytes, tail_chars)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _no_lease() -> Iterator[int]:
    """Not root: the program keeps the caller's uid (no drop possible), so there is nothing to lease."""
    yield -1


def _run(work, uid, marker, python, site_packages, limits, max_output_bytes, tail_chars) -> SandboxResult:
    args = [f"{k}={v}" for k, v in limits.items() if k != "nproc" or uid >= 0]
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
    exited = False
    try:
        out, err, over, exited = _collect(pidfd, out_r, err_r, start + limits["timeout"] + _KILL_GRACE_S,
                                          max_output_bytes)  # fmt: skip
    finally:
        if not exited:  # our deadline or an exception: the supervisor did not finish by itself
            _kill_run(pid, pidfd, uid)
        os.close(pidfd)
        # Every writer has exited or exec'd (the fd is close-on-exec there): read what is buffered, never block.
        os.set_blocking(rep_r, False)
        with os.fdopen(rep_r, "rb") as fh:
            raw = fh.read() or b""
    duration = time.monotonic() - start
    rep = _parse_report(raw)
    iso = _isolation(rep, uid)
    status, returncode, reason = _classify(rep, out, err, over, marker, limits["timeout"])
    return SandboxResult(status, returncode, _tail(out, tail_chars), _tail(err, tail_chars), duration, reason, iso)


def _collect(pidfd: int, out_fd: int, err_fd: int, deadline: float, cap: int):
    """Read stdout/stderr until the supervisor exits (its pidfd turns readable) or the hard deadline.

    A stream past ``cap`` is cut off by closing our end: the writer gets EPIPE instead of filling
    memory here. Returns (stdout, stderr, what went over, whether the supervisor exited).
    """
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    names = {out_fd: "stdout", err_fd: "stderr"}
    over: list[str] = []
    exited_at: float | None = None
    with selectors.DefaultSelector() as sel:
        for fd in (out_fd, err_fd, pidfd):
            sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            streams_open = any(fd in bufs for fd in sel.get_map())
            if exited_at is not None and (not streams_open or now - exited_at > 1.0):
                break  # done; or a straggler outside the PID namespace still holds a pipe
            if now >= deadline:
                over.append("deadline")
                break
            for key, _ in sel.select(timeout=min(0.5, deadline - now)):
                if key.fd == pidfd:
                    exited_at = time.monotonic()
                    sel.unregister(pidfd)
                    continue
                chunk = os.read(key.fd, 1 << 16)
                buf = bufs[key.fd]
                if chunk:
                    buf += chunk[: cap + 1 - len(buf)]
                if not chunk or len(buf) > cap:
                    if len(buf) > cap:
                        over.append(names[key.fd])
                    sel.unregister(key.fd)
                    os.close(key.fd)
        for fd in (out_fd, err_fd):
            if fd in sel.get_map():
                os.close(fd)
    return bufs[out_fd], bufs[err_fd], over, exited_at is not None


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


def _processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "Uid: -1")
            if int(uid_line.split()[1]) == uid:  # the real uid: what RLIMIT_NPROC and kill(-1) go by
                pids.append(int(entry))
    return pids


def _classify(rep, out, err, over, marker, timeout_s) -> tuple[Status, int | None, str]:
    if "error" in rep:
        return "error", None, f"sandbox setup failed: {rep['error']}"
    if "exec" not in rep:
        detail = _tail(err, 500).strip() or "no report from the supervisor"
        return "error", None, f"sandbox did not start the program: {detail}"
    returncode = -int(rep["signal"]) if "signal" in rep else int(rep["exit"]) if "exit" in rep else None
    if any(name in over for name in ("stdout", "stderr")):
        return "output_limit", returncode, f"{'/'.join(n for n in over if n != 'deadline')} over the output cap"
    if rep.get("timeout") == "1" or "deadline" in over:
        return "timeout", returncode, f"wall-clock timeout ({timeout_s:g} s)"
    if returncode == -signal.SIGXCPU:
        return "timeout", returncode, "CPU-time limit"
    if returncode == 0 and f"\n{marker}\n".encode() in out:
        return "passed", returncode, ""
    if returncode is None:
        return "error", None, "no exit status from the sandbox"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return "failed", returncode, f"killed by signal {-returncode} ({name})"
    if returncode == 0:
        return "failed", returncode, "exited 0 before the end of the program (no success marker)"
    return "failed", returncode, f"exit code {returncode}"


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
    """The isolation a run gets on this machine (runs a trivial program)."""
    result = run_program("pass", timeout_s=10)
    if result.status != "passed":
        raise SandboxError(f"sandbox probe failed: {result.status}: {result.reason} {result.stderr_tail}")
    return result.isolation


if __name__ == "__main__" and sys.argv[1:2] == ["--server"]:
    _serve(int(sys.argv[2]))
