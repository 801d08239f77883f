"""tracking=team_server against a real `mlflow server --app-name basic-auth` on loopback: the right credentials
(MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) land the run; a wrong password is one clear
paragraph and the job finishes offline for `mode=sync` later; the password is written nowhere."""

from __future__ import annotations

import json

import pytest
from conftest import MlflowServer, free_port, run_cli

pytestmark = pytest.mark.slow

ADMIN, PASSWORD = "admin", "planted-Admin-pass-0451"  # a value that must never be written anywhere


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth-server")
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder}/basic_auth.db\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        f"sqlite:///{folder}/mlflow.db",
        folder / "artifacts",
        free_port(),
        folder / "server.log",
        extra_args=("--app-name", "basic-auth"),
        env={"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-csrf-key"},
    )
    yield server
    server.stop()


def _job(out, server, password, *extra):
    env = {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
    # The cheapest real job: debug=fast's tiny model on one dataset of one sample.
    only = [f"~category.datasets.{n}" for n in ("humaneval_offline", "gsm8k")]
    args = ("tracking=team_server", "debug=fast", "limit=1", "category=efficiency", *only, *extra)
    return run_cli(*args, f"paths.output_dir={out}", env=env)


def test_the_right_credentials_land_the_run_and_the_password_is_written_nowhere(auth_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    result = _job(tmp_path, auth_server, PASSWORD)
    assert result.returncode == 0, result.stdout[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = MlflowClient(auth_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("efficiency").experiment_id])
    assert run.info.status == "FINISHED" and "coordinate_processing/score" in run.data.metrics
    written = [*run.data.params.values(), *run.data.tags.values(), result.stdout]
    written += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".db"]
    artifacts = auth_server.log_path.parent / "artifacts"
    written += [p.read_text(errors="replace") for p in artifacts.rglob("*") if p.is_file()]
    assert any("tracking.json" in str(p) for p in tmp_path.rglob("tracking.json"))
    assert not [text[:200] for text in written if PASSWORD in text]


def test_a_wrong_password_is_one_paragraph_and_the_job_finishes_offline_for_sync(auth_server, tmp_path):
    result = _job(tmp_path, auth_server, "not-the-password")
    assert result.returncode == 0, result.stdout[-3000:]  # the evaluation itself is not lost
    assert "did not accept the credentials (HTTP 401)" in result.stdout and "MLFLOW_TRACKING_PASSWORD" in result.stdout
    assert "Traceback" not in result.stdout
    (record,) = tmp_path.glob("runs/*/*/tracking.json")
    assert json.loads(record.read_text())["synced"] is False

    env = {"MLFLOW_TRACKING_URI": auth_server.url, "MLFLOW_TRACKING_USERNAME": ADMIN}
    synced = run_cli(
        "mode=sync",
        "tracking=team_server",
        f"paths.output_dir={tmp_path}",
        env={**env, "MLFLOW_TRACKING_PASSWORD": PASSWORD},
    )
    assert synced.returncode == 0, synced.stdout[-3000:]
    assert "synced run" in synced.stdout and json.loads(record.read_text())["synced"] is True
