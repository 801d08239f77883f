"""Hydra callbacks: what happens when a sweep (`python -m runner -m ...`) ends.

Each job writes `job.json` in its own folder (runner/cli.py), wherever the launcher ran it; this
callback runs in the process that launched the sweep, reads them, prints which jobs failed, writes
`sweep_summary.json` and the comparison report (runner/report.py) next to them, and makes the
sweep's exit code say whether any job failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

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


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from runner.summary import format_table

        sweep_dir = Path(config.hydra.sweep.dir).resolve()
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
        from runner.report import write_report

        uris = sorted({job["tracking_uri"] for job in jobs if job.get("tracking_uri")})
        for uri in uris:
            try:
                files = write_report(uri, sweep_dir / "report", sweep_dir=str(sweep_dir))
            except Exception:  # noqa: BLE001 - the sweep's results are in MLflow; a report failure must not hide them
                log.warning("Could not write the sweep's comparison report from %s", uri, exc_info=True)
                continue
            if files is not None:
                print(f"comparison report: {files[1]}")
