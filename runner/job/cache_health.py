"""A damaged response cache is set aside, not fatal.

The response cache (lm-eval's `<cache>_rank<N>.db`, opened by sqlitedict) and its telemetry store
(`<cache>.telemetry.sqlite`, runner/job/cached_telemetry.py) are SQLite files that outlive the runs that wrote
them. A full disk, a half-copied file or junk written over one leaves a file that is not a database; opened
as is, sqlitedict fails in its own thread and the job ends as "a bug in the runner" with a page of
tracebacks, although all it held was answers that can be computed again.

So each is checked before anything opens it (its first bytes, then `PRAGMA quick_check`, which reads every
page: about 0.5 s per GB here). A damaged one is moved to `<name>.corrupt-<UTC time>`, with whichever of its
`-wal`/`-shm`/`-journal` side files are still there after the check (SQLite may delete them as it closes
the file; left beside a fresh database, it would replay them into it), one warning names both paths, and
the job recomputes what the file held. A file that cannot be opened at all (permissions, a folder in its
place) is not damaged, and moving it would lose answers that may be good: the job stops with one paragraph
naming the file and the fix.
"""

from __future__ import annotations

import glob
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from runner.config.schema import ConfigError

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm", "-journal")
_MAGIC = b"SQLite format 3\x00"  # every SQLite database starts so; an empty file is an empty database
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # primary result codes of a file that is not a database


def check_response_cache(cache: str) -> list[Path]:
    """Check the response cache at prefix `cache` (paths.response_cache/<key>) and its telemetry store before
    they are opened. Returns where damaged files were moved; raises ConfigError for a file that cannot be read."""
    prefix = Path(cache)
    files = sorted(prefix.parent.glob(glob.escape(prefix.name) + "_rank*.db"))  # one per lm-eval rank
    files.append(Path(f"{cache}.telemetry.sqlite"))
    return [moved for path in files if (moved := set_aside_if_damaged(path)) is not None]


def set_aside_if_damaged(path: Path) -> Path | None:
    """Move `path` aside (with its side files) if it is not a healthy SQLite database; None if it is, or is absent."""
    try:
        before = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc) from None
    problem = _damage(path)
    if problem is None:
        return None
    try:  # a parallel job of the sweep may have moved it, and made a fresh one, meanwhile
        now = path.stat()
    except FileNotFoundError:
        return None
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        return None
    target = _free_name(path)
    try:
        path.rename(target)
    except FileNotFoundError:
        return None
    for suffix in SIDE_FILES:
        try:
            Path(f"{path}{suffix}").rename(f"{target}{suffix}")
        except FileNotFoundError:  # SQLite deleted it as the check closed the file, or it never existed
            pass
    what = "telemetry store" if path.name.endswith(".telemetry.sqlite") else "file"
    lost = "its measurements are lost" if what == "telemetry store" else "its answers are recomputed"
    log.warning("Response cache %s %s is damaged (%s): moved it to %s; %s.", what, path, problem, target, lost)
    return target


def _damage(path: Path) -> str | None:
    """What is wrong with the database at `path`, or None when it is healthy."""
    try:  # read and write, as the job will: permissions and a folder in its place fail here, not in sqlitedict
        with path.open("r+b") as file:
            header = file.read(len(_MAGIC))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if header and header != _MAGIC:  # junk: said without SQLite, which would delete the side files as it closes
        return "file is not a database"
    try:
        # Read-write, not read-only: a hot journal or a WAL is recovered here as SQLite would on the job's open.
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=60)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from None
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DAMAGED:
            return " ".join(str(exc).split())
        raise  # locked for longer than the timeout, an I/O error: not a verdict on the file's contents
    finally:
        connection.close()
    if rows == [("ok",)]:
        return None
    # One line for the warning: the rows are SQLite's report ("*** in database main ***\nPage 285: ...").
    found = [line.strip() for row in rows for line in str(row[0]).splitlines() if not line.startswith("***")]
    first = found[0][:200] if found else "no detail"
    return f"PRAGMA quick_check: {first}" + (", and more" if len(found) > 1 else "")


def _free_name(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", *SIDE_FILES)):
        number += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    return target


def _unreadable(path: Path, exc: Exception) -> ConfigError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, PermissionError):
        fix = f"make it readable and writable by this user (`chmod u+rw {path}`, or chown it to this user)"
    else:
        fix = "move it out of the way (a fresh cache is made in its place and its answers are recomputed)"
    return ConfigError(
        f"The response cache {path} cannot be opened ({why}). The job reads and writes it "
        f"(paths.response_cache={path.parent}): {fix}, or point paths.response_cache at another folder, or run "
        "with cache=false."
    )
