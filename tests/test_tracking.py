"""MLflow run lifecycle against a real sqlite store and a real `mlflow server`: live, offline, and sync."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from conftest import free_port, mlflow_server
from mlflow import MlflowClient
from test_tracking_outages import connections_to, fresh_http_env  # noqa: F401 - fresh_http_env: the fixture

from runner.tracking import mlflow_run, reaper, run_record


def test_metric_names_lose_what_mlflow_rejects():
    assert mlflow_run.metric_name("coordinate_processing", "acc,none") == "coordinate_processing/acc_none"
    assert mlflow_run.metric_name("ds", "", "exact_match") == "ds/exact_match"
    assert mlflow_run.metric_name("humaneval_offline", "pass@1") == "humaneval_offline/pass_at_1"


@pytest.fixture
def cfg(compose_cfg, tmp_path):
    # No system-metrics thread: these tests are about the run's own content.
    return compose_cfg(f"paths.output_dir={tmp_path}", "tracking.system_metrics=false")


def _runs(uri: str, experiment: str = "text_geospatial"):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _job(cfg, out_dir, *, fail: BaseException | None = None, between=None):
    """What run_job logs, in small: tags, metrics (in two steps), an artifact and a table."""
    with mlflow_run.Tracker(cfg, out_dir, {"engine": "cpu"}) as tracker:
        tracker.log_metrics({"coordinate_processing/acc": 0.5, mlflow_run.metric_name("h", "pass@1"): 1.0})
        if between:
            between()
        (out_dir / "telemetry.json").write_text('{"wall_s": 1.0}\n')
        tracker.log_artifact(out_dir / "telemetry.json")
        tracker.log_table({"prompt": ["a", "b"], "score": [1.0, 0.0]}, "samples/ds/task.json")
        tracker.log_metrics({"wall_s": 12.5})
        if fail is not None:
            raise fail
    return tracker


def _table(client, run_id, tmp_path):
    """A table as MLflow stores it (pandas 'split' JSON), tagged so the UI's evaluation view lists it."""
    assert "samples/ds/task.json" in client.get_run(run_id).data.tags["mlflow.loggedArtifacts"]
    return json.loads(open(client.download_artifacts(run_id, "samples/ds/task.json", str(tmp_path))).read())


def test_a_finished_job_is_one_finished_run_with_config_provenance_and_samples(cfg, tmp_path):
    tracker = _job(cfg, tmp_path / "job")
    (run,) = _runs(cfg.tracking.uri)
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "smollm2_135m/text_geospatial"
    assert run.data.params["model.repo_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert run.data.params["category.datasets.coordinate_processing.num_fewshot"] == "0"
    assert run.data.tags["engine"] == "cpu"
    assert run.data.tags["version.lm_eval"] == "0.4.13" and "version.torch" in run.data.tags
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40 and run.data.tags["git_dirty"] in ("true", "false")
    assert run.data.metrics == {"coordinate_processing/acc": 0.5, "h/pass_at_1": 1.0, "wall_s": 12.5}
    # Artifacts go where the config says, not into the working directory.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    client = MlflowClient(cfg.tracking.uri)
    assert _table(client, run.info.run_id, tmp_path)["data"] == [["a", 1.0], ["b", 0.0]]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["samples", "telemetry.json"]
    record = json.loads((tmp_path / "job" / run_record.RECORD).read_text())
    assert record["synced"] and record["status"] == "FINISHED" and record["run_id"] == run.info.run_id


def _schema(database) -> list:
    """Tables, indexes and triggers with their columns and constraints (as sets: alembic's table rebuilds
    write a table's constraints in an order that varies from run to run), the migration, the experiments."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        tables = [
            (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").split("\n")))
            for kind, name, sql in rows
        ]
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = db.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
    return [tables, version, experiments]


def test_a_new_store_is_a_copy_of_mlflows_own_empty_store_and_an_existing_one_is_never_replaced(compose_cfg, tmp_path):
    cfg = compose_cfg(
        f"paths.output_dir={tmp_path}/out", f"paths.cache_dir={tmp_path}/cache", "tracking.system_metrics=false"
    )
    _job(cfg, tmp_path / "job")  # the job's store is seeded from a template made in its cache folder
    (template,) = (tmp_path / "cache" / "mlflow").glob("empty-mlflow-*.db")
    assert [r.info.status for r in _runs(cfg.tracking.uri)] == ["FINISHED"]

    seeded, built = tmp_path / "seeded.db", tmp_path / "built.db"
    run_record.seed_sqlite_store(seeded, template.parent)
    for database in (seeded, built):  # MLflow opens the copy, and builds the other one itself
        MlflowClient(f"sqlite:///{database}").search_experiments()
    assert _schema(seeded) == _schema(built)  # same tables, same migration, the same Default experiment

    MlflowClient(f"sqlite:///{seeded}").create_experiment("kept")
    run_record.seed_sqlite_store(seeded, template.parent)
    assert MlflowClient(f"sqlite:///{seeded}").get_experiment_by_name("kept") is not None


def test_without_a_usable_template_folder_mlflow_builds_the_store_and_nothing_half_made_is_left(tmp_path):
    blocker = tmp_path / "templates"
    blocker.write_text("a file where the template folder should be")
    run_record.seed_sqlite_store(tmp_path / "store.db", blocker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["templates"]
    MlflowClient(f"sqlite:///{tmp_path}/store.db").create_experiment("works")


def test_an_exception_ends_the_run_failed_with_the_error_attached(cfg, tmp_path):
    with pytest.raises(RuntimeError):
        _job(cfg, tmp_path / "job", fail=RuntimeError("engine died"))
    (run,) = _runs(cfg.tracking.uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: engine died"
    assert run.data.metrics["wall_s"] == 12.5  # what was computed before the failure is kept
    error = MlflowClient(cfg.tracking.uri).download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert "Traceback" in open(error).read()


def test_ctrl_c_ends_the_run_killed(cfg, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _job(cfg, tmp_path / "job", fail=KeyboardInterrupt())
    (run,) = _runs(cfg.tracking.uri)
    assert run.info.status == "KILLED"


def _comparable(run):
    params = {k: v for k, v in run.data.params.items() if k != "tracking.uri"}  # the one intended difference
    return (
        run.info.status,
        run.info.run_name,
        params,
        run.data.metrics,
        {
            k: v
            for k, v in run.data.tags.items()
            if (not k.startswith("mlflow.") or k == "mlflow.source.git.commit") and k != run_record.HEARTBEAT_TAG
        },
    )


@pytest.mark.usefixtures("fresh_http_env")  # the job's own bounds (mlflow_run.http_*), not an earlier test's
def test_an_unreachable_server_costs_seconds_and_sync_creates_the_same_run_later(compose_cfg, tmp_path, monkeypatch):
    live_uri = f"sqlite:///{tmp_path}/live.db"
    live = compose_cfg(f"paths.output_dir={tmp_path}", "tracking.system_metrics=false", f"tracking.uri={live_uri}")
    _job(live, tmp_path / "live_job")

    port = free_port()
    down = f"http://127.0.0.1:{port}"  # nothing listens there
    cfg = compose_cfg(f"paths.output_dir={tmp_path}", "tracking.system_metrics=false", f"tracking.uri={down}")
    attempts = connections_to(monkeypatch, port)
    tracker = _job(cfg, tmp_path / "offline_job")
    # Bounded: one store call, refused, given up after mlflow_run.http_retries retries, and no call after it.
    # MLflow's default retries a dead server 7 times with exponential backoff (minutes), on every call.
    assert attempts == [None] * (1 + cfg.tracking.http_retries), attempts
    assert tracker.run_id is None and not tracker.record.synced
    assert run_record.pending_records(tmp_path) == [tmp_path / "offline_job" / run_record.RECORD]

    # The server is back (here: another store); one command uploads what the job kept.
    synced_uri = f"sqlite:///{tmp_path}/synced.db"
    run_id = run_record.sync_record(tmp_path / "offline_job" / run_record.RECORD, synced_uri)
    (synced,) = _runs(synced_uri)
    (reference,) = _runs(live_uri)
    assert synced.info.run_id == run_id
    assert _comparable(synced) == _comparable(reference)
    assert synced.info.start_time == tracker.record.start_time and synced.info.end_time == tracker.record.end_time
    assert _table(MlflowClient(synced_uri), run_id, tmp_path)["columns"] == ["prompt", "score"]
    assert run_record.pending_records(tmp_path) == []
    run_record.sync_record(tmp_path / "offline_job" / run_record.RECORD, synced_uri)  # repeating it is harmless
    assert len(_runs(synced_uri)) == 1


@pytest.mark.slow
def test_a_server_going_down_mid_run_is_completed_by_sync(compose_cfg, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cfg = compose_cfg(f"paths.output_dir={tmp_path}", "tracking.system_metrics=false", f"tracking.uri={uri}")
    server = mlflow_server(tmp_path / "server", port)
    try:
        tracker = _job(cfg, tmp_path / "job", between=server.stop)
    finally:
        server.stop()
    assert tracker.run_id is not None and not tracker.record.synced
    server = mlflow_server(tmp_path / "server", port)  # back up, same store
    try:
        (before,) = _runs(uri)
        assert before.info.status == "RUNNING" and "wall_s" not in before.data.metrics
        assert run_record.sync_record(tmp_path / "job" / run_record.RECORD) == tracker.run_id
        (after,) = _runs(uri)
        assert after.info.status == "FINISHED" and after.data.metrics["wall_s"] == 12.5
        artifacts = {a.path for a in MlflowClient(uri).list_artifacts(tracker.run_id)}
        assert artifacts == {"samples", "telemetry.json"}
    finally:
        server.stop()


def test_mlflow_tracking_uri_from_the_environment_is_the_default_store(tmp_path):
    from conftest import run_cli

    uri = f"sqlite:///{tmp_path}/elsewhere.db"
    shown = run_cli("--cfg", "job", "--resolve", env={"MLFLOW_TRACKING_URI": uri})
    assert f"uri: {uri}" in shown.stdout, shown.stdout[-2000:]
    given = run_cli("--cfg", "job", "--resolve", "tracking.uri=http://127.0.0.1:5000", env={"MLFLOW_TRACKING_URI": uri})
    assert "uri: http://127.0.0.1:5000" in given.stdout  # the command line wins


def test_runs_left_running_by_dead_jobs_are_closed_killed_in_every_experiment_and_live_ones_are_not(cfg, tmp_path):
    import os
    import socket

    client = MlflowClient(cfg.tracking.uri)
    experiment = client.create_experiment("text_geospatial")
    other = client.create_experiment("coding")  # another category's runs are judged too
    old = str(run_record.now_ms() - 3_600_000)  # an hour ago
    # pid 999999999 is above the kernel's pid_max: no process has it, as after a kill -9.
    dead = client.create_run(other, tags={run_record.PROCESS_TAG: f"{socket.gethostname()}:999999999:1.00"})
    # This process's pid, but a start time that is not this process's: the pid was recycled.
    recycled = client.create_run(
        experiment, tags={run_record.PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}:1.00"}
    )
    alive = client.create_run(
        experiment, tags={run_record.PROCESS_TAG: run_record.process_identity(), run_record.HEARTBEAT_TAG: old}
    )
    # Another host's process cannot be checked from here: its heartbeat decides.
    silent = client.create_run(
        other, tags={run_record.PROCESS_TAG: "another-host:1:1.00", run_record.HEARTBEAT_TAG: old}
    )
    beating = client.create_run(
        experiment,
        tags={run_record.PROCESS_TAG: "another-host:2:1.00", run_record.HEARTBEAT_TAG: str(run_record.now_ms())},
    )
    foreign = client.create_run(other)  # a run some other tool made in this store: never the runner's to end

    closed = reaper.close_dead_runs(client, dead_after_s=600)
    assert sorted(closed) == sorted([dead.info.run_id, recycled.info.run_id, silent.info.run_id])
    assert "kill -9" in client.get_run(dead.info.run_id).data.tags["error"]
    why = client.get_run(silent.info.run_id).data.tags["error"]
    assert "No heartbeat from its job on another-host" in why and "for 60 min" in why
    for run in (dead, recycled, silent):
        assert client.get_run(run.info.run_id).info.status == "KILLED"
    for run in (alive, beating, foreign):  # alive here (whatever its heartbeat), beating elsewhere, not ours
        assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_mode_reap_ends_dead_runs_of_any_experiment_and_host_saying_which_and_why(tmp_path):
    from conftest import run_cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = str(run_record.now_ms() - 7_200_000)
    silent = client.create_run(
        client.create_experiment("math"),
        tags={run_record.PROCESS_TAG: "gpu-node-7:4242:1.00", run_record.HEARTBEAT_TAG: old},
        run_name="qwen25_7b/math",
    )
    result = run_cli("mode=reap", f"tracking.uri={uri}", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"ended KILLED: run {silent.info.run_id} (qwen25_7b/math): No heartbeat from its job on gpu-node-7" in (
        result.stdout
    )
    assert client.get_run(silent.info.run_id).info.status == "KILLED"
    again = run_cli("mode=reap", f"tracking.uri={uri}", f"paths.output_dir={tmp_path}")
    assert "No dead runs in" in again.stdout


def test_a_live_job_refreshes_its_heartbeat_on_the_run_and_in_its_record(cfg, tmp_path):
    cfg.tracking.heartbeat_s = 0.2
    with mlflow_run.Tracker(cfg, tmp_path / "job", {"engine": "cpu"}) as tracker:
        client = MlflowClient(cfg.tracking.uri)

        def heartbeat() -> int:
            return int(client.get_run(tracker.run_id).data.tags[run_record.HEARTBEAT_TAG])

        first = heartbeat()
        deadline = time.monotonic() + 60  # bounds a hang only: the thread beats every 0.2 s
        while (later := heartbeat()) == first:
            assert time.monotonic() < deadline, "the heartbeat on the run was never refreshed"
            time.sleep(0.05)  # polling the store for the next beat
        record = run_record.RunRecord.load(tmp_path / "job" / run_record.RECORD)
        assert later > first and record.heartbeat is not None and record.heartbeat >= later
    assert not tracker._heartbeat.is_alive()  # stopped with the run


def test_sync_refuses_the_record_of_a_job_that_is_still_running(cfg, tmp_path):
    tracker = mlflow_run.Tracker(cfg, tmp_path / "job", {"engine": "cpu"})
    tracker.__enter__()  # the job is running (in this process), its record says RUNNING
    try:
        with pytest.raises(RuntimeError, match="still running"):
            run_record.sync_record(tmp_path / "job" / run_record.RECORD, f"sqlite:///{tmp_path}/other.db")
    finally:
        tracker.__exit__(None, None, None)


def test_progress_is_logged_as_step_metrics_from_another_thread(cfg, tmp_path):
    """What the live display reports every ~10 s (runner/console/progress.py calls it from its own thread)."""
    import threading

    with mlflow_run.Tracker(cfg, tmp_path / "job", {"engine": "cpu"}) as tracker:
        for done, rate in ((3, 50.0), (9, 75.5)):
            worker = threading.Thread(target=tracker.log_progress, args=(done, rate))
            worker.start()
            worker.join()
    (run,) = _runs(cfg.tracking.uri)  # one run: the thread did not start a run of its own
    client = MlflowClient(cfg.tracking.uri)
    done = client.get_metric_history(run.info.run_id, "progress/requests_done")
    rate = client.get_metric_history(run.info.run_id, "progress/output_tokens_per_s")
    assert [(m.step, m.value) for m in done] == [(1, 3.0), (2, 9.0)]
    assert [m.value for m in rate] == [50.0, 75.5]
