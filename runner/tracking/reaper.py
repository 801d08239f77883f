"""Runs whose job died (kill -9, the out-of-memory killer, a lost node): found by the process identity each
run is tagged with (on this host) or by a heartbeat gone stale (any host), and ended KILLED with the reason,
in the store and in the job's record. Every job start, `mode=sync` and `mode=reap` look, in every experiment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from runner.tracking.run_record import HEARTBEAT_TAG, PROCESS_TAG, RECORD, RunRecord, now_ms, process_alive

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)


def close_dead_runs(client: MlflowClient, dead_after_s: float, experiment_ids: list[str] | None = None) -> list[str]:
    """End the runner's RUNNING runs whose job is gone, as KILLED with the reason; every experiment unless
    `experiment_ids` is given. Gone: its process on this host has ended, or (any host) its heartbeat
    (HEARTBEAT_TAG, refreshed every tracking.heartbeat_s by a live job) is older than `dead_after_s`.

    A process killed with SIGKILL cannot end its own run; left RUNNING, it would look like a job still
    in progress forever. Its answers are in the response cache, so rerunning the command finishes the work.
    Runs other tools made in the same store (no PROCESS_TAG) are never touched.
    """
    from mlflow.entities import RunStatus

    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    closed: list[str] = []
    running = client.search_runs(
        experiment_ids, filter_string=f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'"
    )
    now = now_ms()
    for run in running:
        identity = run.data.tags.get(PROCESS_TAG)
        if identity is None:
            continue
        alive = process_alive(identity)
        last = int(run.data.tags.get(HEARTBEAT_TAG) or run.info.start_time)
        if alive is False:
            why = (
                f"The runner process ({identity}) ended without closing this run: it was killed (kill -9, the "
                "out-of-memory killer) or its machine went down."
            )
        elif alive is None and now - last > dead_after_s * 1000:
            host = identity.partition(":")[0]
            why = (
                f"No heartbeat from its job on {host} ({identity}) for {(now - last) / 60000:.0f} min, more than "
                f"tracking.dead_after_s={dead_after_s:.0f} s: the job was killed or its machine went down."
            )
        else:
            continue
        why += " Answers it had received are in the response cache; rerunning the same command computes only the rest."
        _end_killed(client, run, why, last)
        experiment = run.info.experiment_id
        log.warning(
            "Run %s (experiment %s) was left RUNNING by a job that died: ended as KILLED.", run.info.run_id, experiment
        )
        closed.append(run.info.run_id)
    return closed


def _end_killed(client: MlflowClient, run: Run, why: str, last_heartbeat: int) -> None:
    """KILLED in the store and, when its folder is reachable from here, in the job's own record."""
    output_dir = run.data.tags.get("output_dir")
    record_path = Path(output_dir) / RECORD if output_dir else None
    end_time = last_heartbeat
    if record_path is not None and record_path.is_file():
        end_time = max(end_time, int(record_path.stat().st_mtime * 1000))  # the job's last write
    end_time = max(end_time, run.info.start_time)
    client.set_tag(run.info.run_id, "error", why)
    client.set_terminated(run.info.run_id, status="KILLED", end_time=end_time)
    if record_path is not None and record_path.is_file():
        record = RunRecord.load(record_path)
        if record.run_id == run.info.run_id and record.status == "RUNNING":
            record.status, record.end_time = "KILLED", end_time
            record.tags["error"] = why
            record.save(record_path.parent)
