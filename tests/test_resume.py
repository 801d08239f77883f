"""kill -9 (and SIGTERM) and resume, with the real engine: a job killed at any point is finished by rerunning the same
command, which sends the engine only the requests that had not been answered, and ends with the same
scores as a job that was never interrupted. Runs the killed processes left RUNNING are closed as KILLED.
A rerun of a finished job is answered from the response cache without loading the model."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LiveCli, assert_no_process_left, cached_answers
from mlflow import MlflowClient

LIMIT = 2
COMMAND = (
    f"limit={LIMIT}",
    "category=efficiency",  # coordinate_processing (generation) then humaneval_offline (sandboxed scoring)
    "model=smollm2_135m",
    "+category.datasets.coordinate_processing.gen_kwargs.max_gen_toks=16",
    "+category.datasets.humaneval_offline.gen_kwargs.max_gen_toks=32",
    # One sequence at a time, so requests finish one by one and "mid-generation" is a real state.
    "+engine.args.max_num_seqs=1",
    "tracking.system_metrics=false",
    "verbose=true",  # the kill points below are the engine's and lm-eval's own log lines
)
SCORES = ("coordinate_processing/", "humaneval_offline/")


def _start(out: Path) -> LiveCli:
    return LiveCli(*COMMAND, f"paths.output_dir={out}")


def _run_and_kill(out: Path, when: Callable[[str, Path], bool], sig: int = signal.SIGKILL) -> LiveCli:
    """Start the job, send its main process `sig` the moment `when(output so far, out)` holds (SIGKILL: what
    `kill -9 <pid>` does, no handler, no cleanup); return the ended job, its output read."""
    job = _start(out)
    try:
        job.wait_until(lambda: when(job.output, out))
        os.kill(job.process.pid, sig)
        job.process.wait(120)
        if sig != signal.SIGKILL:  # the job stops itself: nothing it started may outlive it
            assert_no_process_left(job.process.pid)
    finally:
        job.stop()
    return job


def _finish(out: Path) -> str:
    job = _start(out)
    assert job.finish() == 0, job.output[-5000:]
    return job.output


def _scores(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if k.startswith(SCORES) and "wall_s" not in k}


def _runs(out: Path):
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("efficiency").experiment_id], order_by=["start_time"])


@pytest.mark.slow
def test_killed_at_every_stage_the_rerun_computes_only_the_rest_and_matches_an_uninterrupted_run(
    tmp_path, default_model_dir
):
    reference = tmp_path / "uninterrupted"
    baseline = _start(reference)  # runs beside the killed ones; only its scores are compared
    out = tmp_path / "killed"
    total = 2 * LIMIT

    # 1. During model load.
    _run_and_kill(out, lambda text, _: "with vLLM (" in text)
    assert cached_answers(out / "cache") == 0
    # 2. In the middle of the job's one generation pass (both datasets' requests together): some answers
    # are saved, some are not. SIGTERM, as SLURM preemption, Kubernetes and `timeout` send: the job ends its
    # own run KILLED at once (no later job reaps it), stops its engine, and says so; exit 128 + 15.
    terminated = _run_and_kill(out, lambda _, where: cached_answers(where / "cache") > 0, signal.SIGTERM)
    assert terminated.process.returncode == 143, terminated.output[-3000:]
    assert "terminated (SIGTERM): the job stopped" in terminated.output and "Traceback" not in terminated.output
    assert [(r.info.status, r.data.tags.get("error")) for r in _runs(out)][-1] == ("KILLED", "terminated (SIGTERM)")
    assert 0 < cached_answers(out / "cache") < total
    # 3. While the first dataset to finish is scored and its results go to MLflow.
    _run_and_kill(out, lambda text, _: "coordinate_processing: acc " in text)
    answered = cached_answers(out / "cache")
    assert LIMIT <= answered <= total

    stdout = _finish(out)
    runs = _runs(out)
    final = runs[-1]
    assert final.info.status == "FINISHED"
    # The engine was sent only what no killed run had finished.
    assert final.data.metrics["requests"] == total - answered
    assert final.data.metrics["requests_from_cache"] == answered
    assert f"Cached requests: {LIMIT}, Requests remaining: 0" in stdout  # the first dataset, entirely from the cache

    assert baseline.finish() == 0, baseline.output[-5000:]
    (uninterrupted,) = _runs(reference)
    expected = _scores(uninterrupted)
    assert expected and _scores(final) == expected

    # Rerunning a finished job: every answer from the cache, no model load, the same scores.
    again_stdout = _finish(reference)
    again = _runs(reference)[-1]
    assert again.data.metrics["requests_from_cache"] == again.data.metrics["requests_total"] == total
    assert again.data.metrics["engine_loaded"] == 0 and again.data.metrics["requests"] == 0
    assert "engine not loaded: every answer came from the cache" in again_stdout
    assert _scores(again) == expected

    # The two killed processes could not end their runs; the next start closed them, none stays RUNNING.
    assert [r.info.status for r in runs] == ["KILLED"] * 3 + ["FINISHED"]
    assert runs[1].data.tags["error"] == "terminated (SIGTERM)"  # ended by the job itself
    for run in (runs[0], runs[2]):
        assert "kill -9" in run.data.tags["error"]
    for run in runs[:3]:
        assert run.info.end_time >= run.info.start_time
        record = Path(run.data.tags["output_dir"]) / "tracking.json"
        assert '"status": "KILLED"' in record.read_text()
        assert not (Path(run.data.tags["output_dir"]) / "telemetry.json").exists()  # written only by a whole job
