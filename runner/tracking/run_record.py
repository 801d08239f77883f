"""A job's MLflow run on disk, and replaying it into a tracking store (`python -m runner mode=sync`).

Everything a run logs is first written to the job's folder (`tracking.json` plus the files it names), so
a job whose store was down, slow or gone still has its whole run, and `sync_record` uploads it later:
into the same run when the live job got as far as creating it, else a new one with the same times,
tags, params, metrics, artifacts and status. Local sqlite stores are created under a file lock, from
a migrated template (seed_sqlite_store).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PROCESS_TAG = "process"  # host:pid:start time of the process that owns the run
HEARTBEAT_TAG = "runner.heartbeat"  # epoch ms, refreshed by a live job (runner/tracking/mlflow_run.py)


def process_identity() -> str:
    import socket

    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}"


def process_alive(identity: str) -> bool | None:
    """Whether the process named by process_identity() still runs; None when that cannot be told here
    (another host, or a run from before this tag existed)."""
    import socket

    import psutil

    host, _, rest = identity.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        # A recycled pid belongs to a process started at another time.
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except psutil.Error:
        return False


RECORD = "tracking.json"


def now_ms() -> int:
    return int(time.time() * 1000)


def remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


@dataclass
class RunRecord:
    """What one run logs, kept in the job folder so it can be replayed into MLflow later."""

    tracking_uri: str
    experiment: str
    artifact_root: str
    run_name: str
    start_time: int = field(default_factory=now_ms)
    end_time: int | None = None
    status: str = "RUNNING"
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # (path relative to the job folder, artifact folder in the run or null)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # artifact files of log_table, also under tables/
    run_id: str | None = None
    heartbeat: int | None = None  # epoch ms, refreshed while the job runs (runner/tracking/reaper.py reads the store's)
    synced: bool = False  # every item above has reached the tracking store

    def save(self, out_dir: Path) -> None:
        tmp = out_dir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(out_dir / RECORD)  # atomic: a crash never leaves half a record

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        data["artifacts"] = [tuple(a) for a in data.get("artifacts", [])]
        return cls(**data)


@contextmanager
def store_lock(uri: str, templates: Path | None = None) -> Iterator[None]:
    """Parallel jobs (joblib, submitit) sharing one sqlite store: the first to touch it creates its tables
    and the experiment, and two processes doing that at once fail ('table experiments already exists').

    With `templates` (a folder), a store that does not exist yet starts as a copy of an empty one there
    (see seed_sqlite_store)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database) + ".lock", timeout=120):
        if templates is not None:
            seed_sqlite_store(database, templates)
        yield


def seed_sqlite_store(database: Path, templates: Path) -> None:
    """Start a new sqlite store as a copy of an empty, fully migrated one, made once per MLflow version.

    MLflow builds a new store by replaying every schema migration it ships (about 70: 1.5-2.5 s on a
    small machine), and every new output folder pays that. The template is what MLflow itself builds,
    less its Default experiment: MLflow creates that on first open, with this store's artifact root. It
    checks the copy's schema version as it would a store of its own. Any failure here leaves no file
    behind, and MLflow then builds the store itself, as it would without a template.
    """
    if database.exists() and database.stat().st_size > 0:
        return
    partial = database.with_name(f".{database.name}.{os.getpid()}.seed")
    try:
        import shutil

        template = _store_template(templates)
        shutil.copyfile(template, partial)
        partial.replace(database)  # atomic: a reader never sees half a database
    except Exception as exc:  # noqa: BLE001 - the template only saves time
        partial.unlink(missing_ok=True)
        log.debug("No MLflow store template (%s); MLflow builds %s itself", exc, database)


def _store_template(templates: Path) -> Path:
    import sqlite3

    import mlflow
    import sqlalchemy

    template = templates / f"empty-mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"
    if template.is_file():
        return template
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    templates.mkdir(parents=True, exist_ok=True)
    building = templates / f".{template.name}.{os.getpid()}.tmp"
    building.unlink(missing_ok=True)
    try:
        store = SqlAlchemyStore(f"sqlite:///{building}", str(templates / "unused-artifacts"))
        store.engine.dispose()
        with sqlite3.connect(building) as db:
            db.execute("DELETE FROM experiments WHERE experiment_id = ?", (int(SqlAlchemyStore.DEFAULT_EXPERIMENT_ID),))
        db.close()
        building.replace(template)  # atomic: two jobs building it at once both end with a whole file
    finally:
        building.unlink(missing_ok=True)
    return template


def experiment_id_for(client: MlflowClient, record: RunRecord) -> str:
    found = client.get_experiment_by_name(record.experiment)
    if found is not None:
        return str(found.experiment_id)
    # A server stores artifacts where it was told to; a local store puts them under outputs/.
    location = None
    if not remote(record.tracking_uri):
        location = (Path(record.artifact_root) / record.experiment).resolve().as_uri()
    return str(client.create_experiment(record.experiment, artifact_location=location))


def log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    params: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    timestamp: int | None = None,
) -> None:
    """Dicts to MLflow entities; MlflowClient.log_batch splits them into requests within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = timestamp or now_ms()
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in (params or {}).items()],
        metrics=[Metric(k, float(v), stamp, 0) for k, v in (metrics or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def pending_records(output_dir: Path) -> list[Path]:
    """Job folders whose run has not fully reached the tracking store."""
    found = []
    for path in sorted(Path(output_dir).glob(f"**/{RECORD}")):
        try:
            if not json.loads(path.read_text()).get("synced", False):
                found.append(path)
        except (OSError, json.JSONDecodeError):
            log.warning("Unreadable run record %s: skipped", path)
    return found


def sync_record(path: Path, tracking_uri: str | None = None) -> str:
    """Replay one job's record into the store; returns the run id. Safe to repeat.

    HTTP waits are bounded by the caller (`mode=sync` applies tracking.http_timeout_s / http_retries).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    record = RunRecord.load(path)
    out_dir = path.parent
    if record.status == "RUNNING" and process_alive(record.tags.get(PROCESS_TAG, "")):
        raise RuntimeError(f"The job in {out_dir} is still running; sync it once it has ended.")
    if tracking_uri:
        record.tracking_uri = tracking_uri
    with store_lock(record.tracking_uri):
        client = MlflowClient(record.tracking_uri)
        client.search_experiments(max_results=1)  # creates the store's tables, if this is its first use
    run_id: str | None = None
    if record.run_id:  # the live job got as far as creating the run: complete that one
        try:
            run_id = str(client.get_run(record.run_id).info.run_id)
        except MlflowException:
            run_id = None
    if run_id is None:
        experiment_id = experiment_id_for(client, record)
        run_id = str(
            client.create_run(
                experiment_id, start_time=record.start_time, tags=record.tags, run_name=record.run_name
            ).info.run_id
        )
    heartbeat = {HEARTBEAT_TAG: str(record.heartbeat)} if record.heartbeat else {}
    log_batch(
        client,
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags={**record.tags, **heartbeat},
        timestamp=record.end_time or record.start_time,
    )
    for relative, artifact_path in record.artifacts:
        local = out_dir / relative
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path)
        elif local.is_file():
            client.log_artifact(run_id, str(local), artifact_path)
    for artifact_file in record.tables:
        client.log_table(run_id, json.loads((out_dir / "tables" / artifact_file).read_text()), artifact_file)
    status = record.status if record.status != "RUNNING" else "KILLED"  # the process died mid-run (checked above)
    client.set_terminated(run_id, status=status, end_time=record.end_time or now_ms())
    record.run_id, record.synced = run_id, True
    record.save(out_dir)
    return run_id
