"""The sandbox's own processes: the fork server, and per run a supervisor, an init and the program.

Run as a standalone script (``python -I -S _server.py --server FD``, started by ``_client``), so it
imports the standard library only: never this package, whose caller side it does not need.

    caller --socketpair--> server --fork--> supervisor --fork--> init --fork--> program
                                                                           (execv python -I -S prog.py)

The supervisor enters fresh network/mount/PID/IPC/UTS namespaces where the OS allows it, forks the
init (PID 1 of the new PID namespace: when it ends, every process in there ends) and enforces the
wall-clock timeout. The init privatises /tmp, /var/tmp, /dev/shm and /run/lock, hides home
directories and reaps orphans; the program's process sets the rlimits and no_new_privs, drops root
to a per-run unprivileged uid and execs a fresh interpreter on the program file. What was applied
is reported to the caller over a private pipe, as key=value lines (read by ``_results``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

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
# mount(src, target, fstype, flags): the helper _private_mounts builds and hands to _readonly_everything_else.
_Mount = Callable[[str | None, str, str | None, int], None]


class _Report:
    """key=value lines to the caller over an inherited pipe (closed on exec, so the program never sees it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen: dict[str, str] = {}  # what this process (and, forked, its children) reported so far

    def __call__(self, key: str, value: object) -> None:
        text = str(value).replace("\n", " ")
        self.seen[key] = text
        os.write(self.fd, f"{key}={text}\n".encode())


# The isolation model-written code needs (what the caller's `full_isolation` checks on its side too), each with
# what it keeps out: checked in the program's own process right before exec, unless the caller allowed less.
_REQUIRED: tuple[tuple[Callable[[dict[str, str]], bool], str], ...] = (
    (lambda seen: seen.get("net_ns") == "1", "no network namespace (the code could reach the network)"),
    (lambda seen: seen.get("pid_ns") == "1", "no PID namespace (the code could see and signal other processes)"),
    (lambda seen: seen.get("readonly_root") == "1", "no read-only filesystem (the code could write outside its tmpfs)"),
    (
        lambda seen: seen.get("uid_drop") == "1" or seen.get("user_ns") == "1",
        "no unprivileged uid or user namespace (the code would run with your own uid)",
    ),
)


def _missing_isolation(seen: dict[str, str]) -> list[str]:
    return [what for ok, what in _REQUIRED if not ok(seen)]


def _libc_call(libc: ctypes.CDLL, name: str, *args: object) -> None:
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


def _enter_namespaces(libc: ctypes.CDLL, report: _Report, uid_drop: bool) -> dict[str, bool]:
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


def _private_mounts(libc: ctypes.CDLL, opts: dict[str, list[str]], work: str, pid_ns: bool, report: _Report) -> str:
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
        with open(os.path.join(work, name), "wb") as out:
            out.write(data)
    report("work_on_tmpfs", 1)
    return work


def _readonly_everything_else(do_mount: _Mount, writable: list[str]) -> bool:
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


def _child(
    libc: ctypes.CDLL, opts: dict[str, list[str]], cmd: list[str], ns: dict[str, bool], report: _Report, started: int
) -> None:
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
        _exec_program(libc, opts, cmd, work, report)  # `started` closes on its exec (close-on-exec) or exit
    os.close(started)
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


def _exec_program(libc: ctypes.CDLL, opts: dict[str, list[str]], cmd: list[str], work: str, report: _Report) -> None:
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
        missing = _missing_isolation(report.seen)
        if missing and "strict" in opts:  # fail closed: the program does not run with less
            report("error", "isolation incomplete: " + "; ".join(missing))
            os._exit(126)
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


def _supervise(libc: ctypes.CDLL, argv: list[str], report: _Report) -> int:
    import select

    opts, cmd = _parse_supervisor_args(argv)
    uid = int(opts["uid"][0])
    ns = _enter_namespaces(libc, report, uid_drop=uid >= 0)
    for name, applied in ns.items():
        report(name, int(applied))
    # The wall-clock timeout is the program's: it starts at its exec, which closes the write end of
    # `started` (close-on-exec). The set-up before it (mounts, privilege drop) has its own, generous
    # deadline, so that a loaded machine's slow set-up is not charged to the program as a timeout.
    started_r, started_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(started_r)
        _child(libc, opts, cmd, ns, report, started_w)
    os.close(started_w)
    pidfd = os.pidfd_open(child)
    if not select.select([started_r], [], [], float(opts["setup"][0]))[0]:
        os.kill(child, _SIGKILL)  # in a PID namespace this kills every process in it
        report("setup_timeout", 1)
    elif not select.select([pidfd], [], [], float(opts["timeout"][0]))[0]:
        os.kill(child, _SIGKILL)
        report("timeout", 1)
    os.close(started_r)
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


if __name__ == "__main__" and sys.argv[1:2] == ["--server"]:
    _serve(int(sys.argv[2]))
