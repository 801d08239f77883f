"""The unprivileged uids runs drop to: leasing one per concurrent run, and finding what a uid still runs."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapters.sandbox._results import SandboxError

# One uid per concurrent run: RLIMIT_NPROC counts per real uid system-wide, and kill(-1) from the
# sandbox reaches every process of its uid, so runs sharing `nobody` could starve or kill each other.
# Unnamed uids in Debian's "global allocation" block, which nothing on these machines uses.
UID_RANGE = range(64000, 64256)


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
        if uid < 0 or fd is None:
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


@contextmanager
def _no_lease() -> Iterator[int]:
    """Not root: the program keeps the caller's uid (no drop possible), so there is nothing to lease."""
    yield -1


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
