"""Stage 3 of a job, record: the run folder, the MLflow run and the summary, from the plan and the execution.

Writes telemetry.json, hardware.json and config_resolved.yaml beside lm-eval's own files, logs them with the
job's telemetry to its MLflow run, builds the `JobResult` and writes `summary.md`. A job whose datasets or
requests failed ends here with one paragraph, its scores kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from runner.engines.job_engine import RequestsFailedError
from runner.job.evaluate import DataError
from runner.job.results import DatasetResult, JobResult
from runner.reporting.summary import print_summary, write_summary_file
from runner.tracking import mlflow_run

if TYPE_CHECKING:
    from runner.config.schema import RunnerConfig
    from runner.job.execute import Execution
    from runner.job.prepare import JobPlan
    from runner.tracking.mlflow_run import Tracker


def record_dataset(tracker: Tracker, result: DatasetResult) -> None:
    """A dataset's scores, task versions and per-sample tables, logged as soon as it finishes."""
    tracker.log_metrics(mlflow_run.dataset_metrics(result))
    # Which version of each task scored it: runs of different data versions are not compared.
    tracker.set_tags({f"task_version.{task}": v for task, v in result.versions.items()})
    for task, table in result.tables.items():
        tracker.log_table(table, f"samples/{result.name}/{task}.json")


def record(
    cfg: RunnerConfig,
    composed: DictConfig,
    job: JobPlan,
    done: Execution,
    out_dir: Path,
    tracker: Tracker,
    peaks: dict[str, float],
) -> JobResult:
    """`peaks`: the job's wall time and peak memory, measured around all three stages."""
    tracker.set_tags({"throughput_source": done.throughput_source})
    telemetry = done.measured | peaks | done.counts
    tracker.log_metrics({k: v for k, v in telemetry.items() if v == v})  # NaN: not measured (all cached)
    _write_run_folder(composed, job, telemetry, out_dir, tracker)
    result = JobResult(
        tracker.run_id,
        tracker.record.synced,
        out_dir,
        job.selection,
        done.results,
        telemetry,
        job.skipped,
        job.sandbox.warnings,
        done.engine_name,
    )
    tracker.log_artifact(write_summary_file(result, cfg))  # every metric with its n, beside the run's scores
    if done.failed:
        print_summary(result, cfg)
        tracker.set_tags({"failed_datasets": ", ".join(done.failed)})
        total = len(job.datasets) + len(job.sandbox.refused)
        others = " and the others were scored and logged" if len(done.failed) < total else ""
        raise DataError(f"{len(done.failed)} of {total} datasets failed{others}. " + " ".join(done.failed.values()))
    _check_failed_requests(done, float(cfg.engine.max_failed_fraction), result, cfg, tracker)
    return result


def _write_run_folder(
    composed: DictConfig, job: JobPlan, telemetry: dict[str, float], out_dir: Path, tracker: Tracker
) -> None:
    (out_dir / "telemetry.json").write_text(json.dumps(telemetry, indent=2) + "\n")
    (out_dir / "hardware.json").write_text(
        json.dumps(job.hardware.as_dict() | {"engine": job.selection.as_dict()}, indent=2) + "\n"
    )
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(composed, resolve=True))
    for name in ("telemetry.json", "hardware.json", "config_resolved.yaml", "runner.log"):
        tracker.log_artifact(out_dir / name)
    tracker.log_artifact(out_dir / ".hydra", "hydra")
    tracker.log_artifact(out_dir / "lm_eval", "lm_eval")


def _check_failed_requests(done: Execution, limit: float, job: JobResult, cfg: RunnerConfig, tracker: Tracker) -> None:
    """One request the engine rejects is one wrong answer; more than `limit` of them fails the job (its
    scores stay logged: they are what the model did, with those requests counted wrong)."""
    failed, served = sum(r.failed for r in done.results), sum(r.served for r in done.results)
    if not served or failed / served <= limit:
        return
    print_summary(job, cfg)
    first = next((error for lm in done.bridges for error in lm.failed.values()), "")
    tracker.set_tags({"requests_failed": str(failed)})
    raise RequestsFailedError(
        f"{failed} of {served} requests failed in the engine ({failed / served:.1%}), more than "
        f"engine.max_failed_fraction={limit}; the first: {first}. Each was scored as a wrong answer and the scores "
        "are kept in the run (per-sample tables have the errors). Fix what the error names and rerun (answered "
        "requests come from the cache), or raise engine.max_failed_fraction to accept them."
    )
