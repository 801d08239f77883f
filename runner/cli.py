"""What `python -m runner` does with a composed config: run a job, or list / plan / doctor / sync / report.

Known problems (bad config, model not found, engine cannot fit) end with one paragraph naming the
problem and the fix, and exit code 2; HYDRA_FULL_ERROR=1 shows the traceback instead. In a sweep
(`-m`), a failing job is recorded (its MLflow run FAILED, `job.json` in its folder) and the sweep
goes on; runner/sweep_callbacks.py lists the failures at the end and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from collections.abc import Set
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from runner.catalog.readiness import check_category_models
from runner.config.schema import ConfigError, RunnerConfig, validate
from runner.console.handlers import FILE_ONLY
from runner.machine import stopping

log = logging.getLogger("runner")


JOB_STATUS = "job.json"  # a sweep job's outcome, read by the end-of-sweep summary


class SyncError(RuntimeError):
    """Runs kept on disk could not be uploaded; they stay pending for the next `mode=sync`."""


def dispatch(cfg: DictConfig, out_dir: Path, overridden: Set[str] = frozenset(), in_sweep: bool = False) -> object:
    from runner.catalog.weights import ModelNotFoundError
    from runner.engines.job_engine import RequestsFailedError
    from runner.engines.load import EngineLoadError
    from runner.job.evaluate import DataError
    from runner.machine.hardware import HardwareError

    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # HardwareError covers SelectionError: a device mask, busy GPUs, a driver, a model too big.
    known = (ConfigError, HardwareError, ModelNotFoundError, DataError, EngineLoadError, RequestsFailedError, SyncError)
    try:
        result = _act(cfg, out_dir, overridden)
    except (*known, OSError, sqlite3.OperationalError) as exc:
        message = str(exc) if isinstance(exc, known) else _disk_problem(exc, cfg)
        if message is None or (full_error and not in_sweep):
            raise
        log.error("%s", message, extra=FILE_ONLY)  # the console gets the paragraph below, once
        print(f"error: {message}", file=sys.stderr)
        if not in_sweep:
            sys.exit(2)
        _job_status(out_dir, cfg, "FAILED", message)
        return None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (runner/machine/stopping.py)
        if in_sweep:
            _job_status(out_dir, cfg, "KILLED", stopping.reason(exc))
            print(
                f"\n{stopping.reason(exc)}: the sweep stops at this job ({out_dir}), its MLflow run ended KILLED; "
                "the jobs before it keep their runs, the ones after it did not start. Rerun the sweep to finish it "
                "(answers already received come from the response cache).",
                file=sys.stderr,
            )
            raise  # runner/__main__.py ends the process with the signal's exit code
        if full_error:
            raise
        _stopped(exc, cfg)
    except Exception as exc:
        if stopping.received() is not None and not in_sweep:  # the engine died of the same signal
            _stopped(exc, cfg)
        if full_error and not in_sweep:
            raise
        # Anything else is a bug (in the runner, a library or a user's own engine), not a setting to fix: the
        # message says so and where the traceback is. In a sweep this job is lost, the next one still runs.
        log.exception("Job failed with an unexpected error", extra=FILE_ONLY)
        first = (str(exc).strip().splitlines() or [""])[0][:500]
        message = (
            f"{type(exc).__name__}: {first}. This is not a problem with your settings but a bug in the runner or "
            f"in a library it uses; the full traceback is in {out_dir / 'runner.log'} (HYDRA_FULL_ERROR=1 prints "
            "it here). Results already computed are kept; please report the bug with that file."
        )
        if not in_sweep:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        _job_status(out_dir, cfg, "FAILED", message)
        return None
    if in_sweep:
        _job_status(out_dir, cfg, "FINISHED", None, getattr(result, "run_id", None))
    return result


def _stopped(exc: BaseException, cfg: DictConfig) -> NoReturn:
    """A job stopped by Ctrl-C or a signal: what became of it, then the shell's exit code for that signal."""
    stopping.stop_children()
    print(
        f"\n{stopping.reason(exc)}: the job stopped; its MLflow run is ended KILLED. Answers received so far are "
        f"in the response cache ({cfg.paths.response_cache}): rerun the same command to compute only the rest.",
        file=sys.stderr,
    )
    sys.exit(stopping.exit_code(exc))


def _disk_problem(exc: Exception, cfg: DictConfig) -> str | None:
    """A full or read-only disk in the middle of a job, as one paragraph (other errors are not known)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        return (
            f"{exc.filename}: {exc.strerror}. The job reads and writes under paths.output_dir "
            f"({cfg.paths.output_dir}) and paths.cache_dir ({cfg.paths.cache_dir}): make them usable by this user "
            "(or point them at folders that are), and rerun."
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        what = f"Writing {exc.filename or 'a file'} failed: {exc.strerror}"
    elif isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "readonly" in str(exc)):
        what = f"An SQLite write (response cache or MLflow store) failed: {exc}"
    else:
        return None
    return (
        f"{what}. Answers received so far are kept in the "
        f"response cache ({cfg.paths.response_cache}) when it could be written; free space (or make "
        f"{cfg.paths.output_dir} writable) and rerun the same command to compute only the rest."
    )


def typed(composed: DictConfig) -> RunnerConfig:
    """The composed config as the schema's dataclasses (runner/config/schema.py), checked: made once, passed
    down. Keys the schema does not type (`+engine.<name>=...` for an engine of your own) stay on `composed`."""
    try:
        cfg = OmegaConf.to_object(composed)  # resolves every interpolation: ${torch_seed:${seed}} checks the seed
    except InterpolationResolutionError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ConfigError):  # OmegaConf wraps it once per level
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None  # our resolver's own paragraph, not OmegaConf's wrapping of it
    if not isinstance(cfg, RunnerConfig):
        raise ConfigError(f"the composed config is a {type(cfg).__name__}, not the runner's schema (conf/config.yaml)")
    validate(cfg)
    return cfg


def _act(composed: DictConfig, out_dir: Path, overridden: Set[str]) -> object:
    cfg = typed(composed)
    if cfg.mode == "list":
        return list_catalog(cfg, category_given="category" in overridden)
    if cfg.mode == "sync":
        return sync(cfg, "tracking.uri" in overridden)
    if cfg.mode == "reap":
        return reap(cfg)
    if cfg.mode == "report":
        return report(cfg, out_dir)
    check_category_models(cfg.category)
    if cfg.mode == "plan":
        return plan(cfg, out_dir, "model" in overridden)
    if cfg.mode == "doctor":
        return doctor(cfg)
    from runner.job.run import run_job

    return run_job(cfg, out_dir, composed)


def _job_status(out_dir: Path, cfg: DictConfig, status: str, error: str | None, run_id: str | None = None) -> None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "job_num": hydra_cfg.job.num,
        "overrides": list(hydra_cfg.overrides.task),
        "status": status,
        "error": error,
        "run_id": run_id,
        "model": cfg.model.get("name"),
        "category": cfg.category.get("name"),
        "tracking_uri": cfg.tracking.uri,
        "output_dir": str(out_dir),
    }
    (out_dir / JOB_STATUS).write_text(json.dumps(record, indent=2) + "\n")


def reap(cfg: RunnerConfig, quiet: bool = False) -> list[str]:
    """End every run of the store that a dead job left RUNNING (runner/tracking/reaper.py), saying which and why."""
    from mlflow import MlflowClient

    from runner.tracking.mlflow_run import bound_http_waits
    from runner.tracking.reaper import close_dead_runs
    from runner.tracking.run_record import store_lock

    bound_http_waits(cfg.tracking.http_timeout_s, cfg.tracking.http_retries)
    uri = str(cfg.tracking.uri)
    with store_lock(uri, templates=Path(cfg.paths.cache_dir) / "mlflow"):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates a local store's tables on first use
    closed = close_dead_runs(client, float(cfg.tracking.dead_after_s))
    for run_id in closed:
        run = client.get_run(run_id)
        print(f"ended KILLED: run {run_id} ({run.info.run_name}): {run.data.tags.get('error', '')}")
    if not closed and not quiet:
        print(f"No dead runs in {uri}: every RUNNING run there has a live job.")
    return closed


def sync(cfg: RunnerConfig, uri_given: bool) -> list[str]:
    """Upload runs that could not reach the tracking store when they ran (`tracking.json` in job folders)."""
    from runner.tracking.mlflow_run import bound_http_waits, unreachable
    from runner.tracking.run_record import pending_records, sync_record

    bound_http_waits(cfg.tracking.http_timeout_s, cfg.tracking.http_retries)
    pending = pending_records(Path(cfg.paths.output_dir))
    if not pending:
        print(f"Nothing to sync: every run under {cfg.paths.output_dir} is in its tracking store.")
        reap(cfg, quiet=True)
        return []
    synced, failed = [], []
    for position, path in enumerate(pending):
        try:
            run_id = sync_record(path, cfg.tracking.uri if uri_given else None)
        except Exception as exc:  # noqa: BLE001 - report each record, go on with the others
            failed.append(path)
            print(f"not synced: {path.parent}: {type(exc).__name__}: {str(exc)[:600]}", file=sys.stderr)
            if unreachable(exc):  # the store is not answering: the other records would each wait as long
                failed.extend(pending[position + 1 :])
                break
            continue
        synced.append(run_id)
        print(f"synced run {run_id} <- {path.parent}")
    if not failed:
        reap(cfg, quiet=True)  # and what other jobs left RUNNING there
    if failed:
        raise SyncError(
            f"{len(failed)} of {len(pending)} runs could not be uploaded (above). They stay on disk; "
            "check that the tracking store is reachable (tracking.uri=... or MLFLOW_TRACKING_URI) and run "
            "`python -m runner mode=sync` again."
        )
    return synced


def report(cfg: RunnerConfig, out_dir: Path) -> tuple[Path, Path] | None:
    from runner.reporting.report import write_report
    from runner.tracking.mlflow_run import bound_http_waits

    bound_http_waits(cfg.tracking.http_timeout_s, cfg.tracking.http_retries)

    target = Path(cfg.report.out_dir) if cfg.report.out_dir else out_dir
    files = write_report(
        cfg.tracking.uri,
        target,
        experiments=list(cfg.report.experiments) or None,
        sweep_dir=cfg.report.sweep_dir,
    )
    if files is None:
        raise ConfigError(
            f"No runs to report in {cfg.tracking.uri} (experiments={list(cfg.report.experiments) or 'all'}, "
            f"sweep_dir={cfg.report.sweep_dir}). Run a job first, or point tracking.uri at the store that has them."
        )
    print(f"report: {files[1]}\nplot:   {files[0]}")
    return files


def list_catalog(cfg: RunnerConfig, category_given: bool = False) -> list[dict[str, Any]]:
    """One line per category; with category=X on the command line that category's reasons, with
    verbose=true every category's. output=json always gives every category in full."""
    from runner.catalog.readiness import category_status, load_catalog, project_tasks, render_list

    categories, models = load_catalog()
    own = project_tasks(cfg.paths.tasks_dir)
    statuses = []
    for category in categories.values():
        if category_given and category.name == cfg.category.name:
            category = cfg.category  # with the command line's overrides (local data files, say)
        check_category_models(category, models)
        statuses.append(category_status(category, models, cfg.paths.cache_dir, cfg.paths.tasks_dir, own))
    if cfg.output == "json":
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    elif category_given:
        print(render_list([s for s in statuses if s.name == cfg.category.name], detailed=True))
    else:
        print(render_list(statuses, detailed=bool(cfg.verbose)))
    return [s.as_dict() for s in statuses]


def plan(cfg: RunnerConfig, out_dir: Path, model_overridden: bool) -> dict[str, Any]:
    from runner.catalog.readiness import load_model
    from runner.job.plan import build_plan, plan_model, render_plan, write_plan
    from runner.machine.ray_cluster import job_hardware
    from runner.reporting.power import last_spreads
    from runner.tracking.mlflow_run import bound_http_waits

    # With model=... the plan covers that model; otherwise every model the category lists.
    models = [cfg.model] if model_overridden else [load_model(name) for name in cfg.category.models]
    hardware = job_hardware(cfg)
    bound_http_waits(cfg.tracking.http_timeout_s, cfg.tracking.http_retries)
    metrics = {name: dataset.metric for name, dataset in cfg.category.datasets.items()}
    spreads = last_spreads(cfg.tracking.uri, cfg.tracking.experiment, metrics)
    result = build_plan(cfg, [plan_model(cfg, model, hardware) for model in models], hardware, spreads)
    path = write_plan(result, out_dir)
    if cfg.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_plan(result))
        print(f"plan written to {path}")
    return result


def doctor(cfg: RunnerConfig) -> list[dict[str, Any]]:
    from runner.machine.doctor import as_json, render, run_checks
    from runner.machine.hardware import HardwareError, detect

    try:
        hardware, mask_error = detect(), None
    except HardwareError as exc:  # a bad CUDA_VISIBLE_DEVICES is one of the problems doctor reports
        hardware, mask_error = detect(apply_visible_devices=False), exc
    checks = run_checks(cfg, hardware, mask_error)
    print(json.dumps(as_json(checks), indent=2) if cfg.output == "json" else render(checks))
    return as_json(checks)
