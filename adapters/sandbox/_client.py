"""The caller's end of the fork server (``_server``): started on first use, restarted if it died."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading

from adapters.sandbox import _server
from adapters.sandbox._results import SandboxError

# The server's whole environment, so every program's: nothing of the caller's (tokens, proxies) gets in.
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


class _Server:
    """The caller's end of the fork server: started on first use, restarted if it died, one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()

    def _start(self) -> None:
        # By file path, not -m: the server imports the standard library only, never this package.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(_server.__file__), "--server", str(theirs.fileno())],
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
