"""Hydra callbacks: what happens when a sweep (`python -m runner -m ...`) ends.

Each job writes `job.json` in its own folder (runner/cli.py), wherever the launcher ran it; this
callback runs in the process that launched the sweep, reads them, prints which jobs failed, writes
`sweep_summary.json` and the comparison report (runner/reporting/report.py) next to them, and makes the
sweep's exit code say whether any job failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.cli import JOB_STATUS

log = logging.getLogger("runner")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    for path in sweep_dir.glob(f"*/{JOB_STATUS}"):
        try:
            jobs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            jobs.append(
                {"job_num": -1, "status": "UNKNOWN", "error": f"unreadable {path}", "output_dir": str(path.parent)}
            )
    return sorted(jobs, key=lambda job: job.get("job_num", -1))


def output_problem(output_dir: Path, min_free_mb: int, key: str = "paths.output_dir") -> str | None:
    """Why jobs could not write under output_dir (the setting named `key`), and the fix (None: they can)."""
    import errno
    import shutil
    import tempfile

    if key == "paths.output_dir":
        where = (
            "Runs, logs, the response cache and the local MLflow store all live there: {fix}, or point "
            "paths.output_dir at another disk."
        )
    else:  # the job's or sweep's own folder, set apart from paths.output_dir
        what = "The sweep's job folders (logs, results, run records) go" if "sweep" in key else "The job's folder goes"
        where = f"{what} there: {{fix}}, or drop {key} to keep them under paths.output_dir."
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{key}={output_dir} is full. " + where.format(fix="free some space")
        problem = exc.strerror or str(exc)
        return f"{key}={output_dir} is not writable ({problem}). " + where.format(fix="make it writable")
    free_mb = shutil.disk_usage(output_dir).free / 2**20
    if free_mb < min_free_mb:
        return (
            f"{key}={output_dir} has {free_mb:.0f} MB free, less than paths.min_free_mb={min_free_mb}. "
            + where.format(fix="free some space")
        )
    return None


class OutputCheck(Callback):
    """Before Hydra creates a job's folder: a read-only or full output_dir is one message, not a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, folder_key: str) -> None:
        import sys

        from omegaconf import OmegaConf

        # Free space matters for jobs that evaluate; list, plan and the others write a few small files.
        min_free = int(config.paths.min_free_mb) if config.mode == "run" else 0
        problem = output_problem(Path(config.paths.output_dir), min_free)
        if problem is None:  # the job's (or sweep's) own folder, which hydra.run.dir / hydra.sweep.dir can move
            problem = output_problem(Path(str(OmegaConf.select(config, folder_key))), 0, key=folder_key)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        # What libraries log while the sweep ends (matplotlib, MLflow, as the report is made) goes to sweep.log;
        # the console shows Hydra's and the runner's lines (conf/hydra/hydra_logging/runner.yaml).
        log_file = logging.FileHandler(sweep_dir / "sweep.log", delay=True)
        log_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(log_file)
        try:
            self._summarize(config, sweep_dir)
        finally:
            logging.getLogger().removeHandler(log_file)
            log_file.close()

    def _summarize(self, config: DictConfig, sweep_dir: Path) -> None:
        from runner.console.tables import format_table

        jobs = read_jobs(sweep_dir)
        (sweep_dir / "sweep_summary.json").write_text(json.dumps(jobs, indent=2) + "\n")
        rows = [
            [str(job.get("job_num")), " ".join(job.get("overrides") or []), job["status"], job.get("run_id") or "-"]
            for job in jobs
        ]
        print()
        print(f"sweep {sweep_dir}: {len(jobs)} jobs")
        if rows:
            print(format_table(["job", "overrides", "status", "MLflow run"], rows))
        if jobs and config.report.after_sweep:
            self._report(jobs, sweep_dir)
        failed = [job for job in jobs if job["status"] != "FINISHED"]
        if failed:
            for job in failed:
                overrides = " ".join(job.get("overrides") or [])
                print(f"job {job.get('job_num')} ({overrides}) {job['status']}: {job.get('error')}")
            print(f"{len(failed)} of {len(jobs)} jobs failed; each one's folder has its log (runner.log).")
            raise SystemExit(1)

    @staticmethod
    def _report(jobs: list[dict[str, Any]], sweep_dir: Path) -> None:
        from runner.reporting.report import write_report

        uris = sorted({job["tracking_uri"] for job in jobs if job.get("tracking_uri")})
        for uri in uris:
            try:
                files = write_report(uri, sweep_dir / "report", sweep_dir=str(sweep_dir))
            except Exception:  # noqa: BLE001 - the sweep's results are in MLflow; a report failure must not hide them
                log.warning("Could not write the sweep's comparison report from %s", uri, exc_info=True)
                continue
            if files is not None:
                print(f"comparison report: {files[1]}")
