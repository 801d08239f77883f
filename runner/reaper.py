"""Runs whose process died (kill -9, the out-of-memory killer, a lost node): found by the process identity
each run is tagged with, and ended KILLED with the reason, in the store and in the job's record."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from runner.run_record import RECORD, RunRecord, now_ms

log = logging.getLogger(__name__)

PROCESS_TAG = "process"  # host:pid:start time of the process that owns the run


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
        end_time = now_ms()
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
