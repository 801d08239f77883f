"""A damaged response cache is set aside, not fatal (runner/job/cache_health.py): a file that is not a healthy SQLite
database is moved to `<name>.corrupt-<UTC time>` with one warning and its answers are recomputed; a file that
cannot be opened stops the job with one paragraph. docs/reliability.md lists the cases."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli
from sqlitedict import SqliteDict

from runner.config.schema import ConfigError
from runner.job.cache_health import check_response_cache, set_aside_if_damaged

# One cheap real job (conf/debug/fast.yaml: a 14M random-weight model on transformers), one dataset, one sample.
OTHERS = ("coordinate_processing", "address_parsing", "location_ner", "ner_locations")
JOB = ["debug=fast", "cache=true", "limit=1", *(f"~category.datasets.{name}" for name in OTHERS)]


def _cache(path: Path, answers: int = 50) -> Path:
    """A response cache as lm-eval writes it (sqlitedict, its default table)."""
    with SqliteDict(str(path), autocommit=True) as cache:
        for number in range(answers):
            cache[f"key{number}"] = ("an answer " * 20, number)
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("runner") and r.levelno == logging.WARNING]


# --- the check itself ----------------------------------------------------------------------------------------


def test_a_healthy_cache_is_left_untouched(tmp_path, caplog):
    db = _cache(tmp_path / "m-abc_rank0.db")
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    assert check_response_cache(str(tmp_path / "m-abc")) == []
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-abc_rank0.db"] and not _warnings(caplog)


def test_a_missing_cache_is_nothing_to_do(tmp_path, caplog):
    assert check_response_cache(str(tmp_path / "m-abc")) == []
    assert set_aside_if_damaged(tmp_path / "never.db") is None
    assert not list(tmp_path.iterdir()) and not _warnings(caplog)  # nothing created either


def test_junk_is_moved_aside_with_its_side_files_and_a_fresh_cache_works(tmp_path, caplog):
    db = tmp_path / "m-abc_rank0.db"
    db.write_bytes(os.urandom(12288))  # what a copied half-file or a bad disk leaves
    for suffix in ("-wal", "-shm"):  # SQLite would replay a stale WAL into a fresh database of the same name
        Path(f"{db}{suffix}").write_bytes(b"stale")
    (moved,) = check_response_cache(str(tmp_path / "m-abc"))
    assert moved.parent == tmp_path and moved.name.startswith("m-abc_rank0.db.corrupt-")
    stamp = moved.name.removeprefix("m-abc_rank0.db.corrupt-")  # 20261206T021500Z: UTC, to the second
    assert len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [moved.name, f"{moved.name}-shm", f"{moved.name}-wal"]
    (warning,) = _warnings(caplog)
    assert str(db) in warning and str(moved) in warning and "file is not a database" in warning
    _cache(db, answers=3)  # lm-eval makes a fresh one in its place
    with SqliteDict(str(db)) as fresh:
        assert len(fresh) == 3


def _telemetry_copied_while_open(path: Path) -> Path:
    """A WAL database copied while its writer had it open: the copy has `-wal` and `-shm` files beside it."""
    import shutil

    live = path.with_name("live.sqlite")
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, latency_s REAL)")
    writer.executemany("INSERT INTO answers VALUES (?, ?)", [(f"key{n}" * 20, n) for n in range(2000)])
    writer.commit()
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.executemany("INSERT INTO answers VALUES (?, ?)", [(f"new{n}", n) for n in range(200)])
    writer.commit()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{live}{suffix}", f"{path}{suffix}")
    writer.close()
    return path


@pytest.mark.parametrize("kind", ["response-cache", "telemetry-store-with-wal"])
def test_a_truncated_cache_is_moved_aside(tmp_path, caplog, kind):
    if kind == "response-cache":
        db = _cache(tmp_path / "m-abc_rank0.db", answers=400)
    else:
        db = _telemetry_copied_while_open(tmp_path / "m-abc.telemetry.sqlite")
    with db.open("r+b") as file:  # half a file: a full disk, or a copy cut short
        file.truncate(db.stat().st_size // 2)
    moved = set_aside_if_damaged(db)
    assert moved is not None and moved.exists() and not db.exists()
    assert not list(tmp_path.glob(f"{db.name}-*"))  # no side file left for a fresh database to replay
    (warning,) = _warnings(caplog)
    assert "\n" not in warning and str(moved) in warning
    assert "database disk image is malformed" in warning or "PRAGMA quick_check: Page " in warning, warning


def test_a_damaged_telemetry_store_is_moved_aside_and_the_answers_kept(tmp_path, caplog):
    from runner.job.cached_telemetry import CachedTelemetry

    db = _cache(tmp_path / "m-abc_rank0.db")
    store = tmp_path / "m-abc.telemetry.sqlite"
    store.write_bytes(b"\0" * 100 + os.urandom(4000))
    (moved,) = check_response_cache(str(tmp_path / "m-abc"))
    assert moved.name.startswith("m-abc.telemetry.sqlite.corrupt-") and db.exists()
    (warning,) = _warnings(caplog)
    assert str(store) in warning and str(moved) in warning
    CachedTelemetry(str(tmp_path / "m-abc")).close()  # a fresh store opens


def test_a_cache_that_cannot_be_opened_is_one_error_naming_it_and_the_fix(tmp_path):
    folder = tmp_path / "m-abc_rank0.db"
    folder.mkdir()  # a folder where the file should be
    with pytest.raises(ConfigError) as raised:
        check_response_cache(str(tmp_path / "m-abc"))
    assert f"The response cache {folder} cannot be opened (Is a directory)" in str(raised.value)
    assert "move it out of the way" in str(raised.value) and folder.is_dir()  # not moved: it is not damage


def test_a_cache_without_read_permission_is_one_error_and_stays(tmp_path):
    """Real permissions: as root (who reads anything) the check runs in a child dropped to nobody's uid."""
    with tempfile.TemporaryDirectory() as where:  # under /tmp: a folder another uid can enter
        os.chmod(where, 0o777)
        db = _cache(Path(where) / "m-abc_rank0.db")
        db.chmod(0o000)
        if os.geteuid() != 0:
            with pytest.raises(ConfigError) as raised:
                check_response_cache(str(Path(where) / "m-abc"))
            message = str(raised.value)
        else:
            message = _as_nobody(lambda: check_response_cache(str(Path(where) / "m-abc")))
        assert f"The response cache {db} cannot be opened (Permission denied)" in message, message
        assert f"chmod u+rw {db}" in message and "cache=false" in message
        assert sorted(p.name for p in Path(where).iterdir()) == ["m-abc_rank0.db"]  # left where it was


def _as_nobody(check) -> str:
    """Run `check()` in a forked child as uid/gid 65534; returns the ConfigError's message it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                check()
                result = "no error"
            except ConfigError as exc:
                result = str(exc)
            except Exception as exc:  # reported to the parent as text
                result = f"{type(exc).__name__}: {exc}"
            os.write(write, result.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


# --- through the CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_job(tmp_path_factory) -> Path:
    """A real job with the response cache on; returns its output folder (the cache is under cache/)."""
    out = tmp_path_factory.mktemp("damaged_cache")
    result = run_cli(*JOB, f"paths.output_dir={out}")
    assert result.returncode == 0, result.stdout[-4000:]
    return out


def test_a_damaged_cache_is_set_aside_with_one_warning_and_the_rerun_finishes(cached_job):
    out = cached_job
    (db,) = (out / "cache").glob("*_rank0.db")
    (store,) = (out / "cache").glob("*.telemetry.sqlite")
    for damaged in (db, store):  # junk over both, as a full disk or a half-copied file leaves them
        damaged.write_bytes(os.urandom(damaged.stat().st_size))
    result = run_cli(*JOB, f"paths.output_dir={out}")
    output = result.stdout
    assert result.returncode == 0 and "Traceback" not in output, output[-4000:]
    for damaged in (db, store):
        (line,) = [line for line in output.splitlines() if f"{damaged} is damaged" in line]
        (moved,) = damaged.parent.glob(f"{damaged.name}.corrupt-*")
        assert line.split(" ", 1)[1].startswith("warning: ") and f"moved it to {moved}" in line, line
    assert "requests: 1, 0 from the response cache" in output  # recomputed
    with sqlite3.connect(db) as fresh:  # and the fresh cache holds the answer again
        assert fresh.execute("SELECT COUNT(*) FROM unnamed").fetchone()[0] == 1
    rerun = sorted(out.glob("runs/*/*/tracking.json"))[-1]
    assert json.loads(rerun.read_text())["status"] == "FINISHED"


def test_a_cache_that_cannot_be_opened_stops_the_job_with_one_paragraph(cached_job, tmp_path):
    out = cached_job
    (db,) = (out / "cache").glob("*_rank0.db")
    db.rename(tmp_path / "kept.db")
    db.mkdir()  # a folder in the file's place: opening it fails as permissions would (runs as root here)
    try:
        result = run_cli(*JOB, f"paths.output_dir={out}")
    finally:
        db.rmdir()
        (tmp_path / "kept.db").rename(db)
    output = result.stdout
    assert result.returncode == 2 and "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: The response cache {db} cannot be opened (Is a directory). The job reads and writes it "
        f"(paths.response_cache={db.parent}): move it out of the way (a fresh cache is made in its place and its "
        "answers are recomputed), or point paths.response_cache at another folder, or run with cache=false."
    ], output[-4000:]
    failed = sorted(out.glob("runs/*/*/tracking.json"))[-1]  # this job's run ended FAILED with the paragraph
    assert json.loads(failed.read_text())["status"] == "FAILED"
