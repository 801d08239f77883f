"""A very slow tracking server: it accepts connections and reads requests but never answers in time.

Jobs and `mode=sync` must wait on it only as long as mlflow_run.http_timeout_s / http_retries say, keep the
run on disk, and a later sync into a store that answers must produce the complete run.
(Down before the run and going down mid-run: tests/test_tracking.py.)
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import free_port, run_cli
from mlflow import MlflowClient

from runner.tracking import mlflow_run, run_record

TIMEOUT_S = 2
RETRIES = 0
# Bounds a hang of the CLI only (what is checked is how it waited: its requests and its timeout): far past the
# configured wait and the CLI's start (Python, Hydra, MLflow: about 4 s here), before MLflow's default 120 s.
CLI_HANG_S = 90
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
METRICS = {"coordinate_processing/acc": 0.5, "h/pass_at_1": 1.0, "wall_s": 12.5}


def connections_to(monkeypatch, port: int) -> list:
    """Every TCP connection this process's HTTP client (urllib3, under requests and MLflow) tries to open to
    `port`, in order: its socket (whose timeout is then the one its reads waited with), or None if refused."""
    import urllib3.util.connection as connection

    tried: list = []
    create = connection.create_connection

    def recording(address, *args, **kwargs):
        if address[1] != port:
            return create(address, *args, **kwargs)
        tried.append(None)
        tried[-1] = create(address, *args, **kwargs)
        return tried[-1]

    monkeypatch.setattr(connection, "create_connection", recording)
    return tried


@dataclass
class SlowServer:
    """A TCP server on loopback that reads each HTTP request and then holds the connection without answering."""

    url: str
    requests: list[str] = field(default_factory=list)  # request lines, in the order they arrived


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    stop = threading.Event()
    handlers: list[threading.Thread] = []
    port = free_port()
    slow = SlowServer(f"http://127.0.0.1:{port}")

    class Hold(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handlers.append(threading.current_thread())
            self.request.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            slow.requests.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
            stop.wait(120)  # "answers" only once the test is over: far past any bounded client timeout

    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Hold)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, name="slow-mlflow", daemon=True)
    serving.start()
    try:
        yield slow
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)
        for handler in handlers:
            handler.join(timeout=10)
        assert not serving.is_alive() and not any(h.is_alive() for h in handlers)


@pytest.fixture
def fresh_http_env() -> Iterator[None]:
    """No MLFLOW_HTTP_REQUEST_* at the start, and as found at the end: bound_http_waits only sets defaults
    (os.environ, process-wide), so a Tracker of an earlier test would otherwise decide this test's waits."""
    saved = {name: os.environ.pop(name) for name in HTTP_ENV if name in os.environ}
    yield
    for name in HTTP_ENV:
        os.environ.pop(name, None)
    os.environ.update(saved)


def _slow_cfg(compose_cfg, tmp_path, slow: SlowServer):
    return compose_cfg(
        f"paths.output_dir={tmp_path}",
        "tracking.system_metrics=false",
        f"tracking.uri={slow.url}",
        f"tracking.http_timeout_s={TIMEOUT_S}",
        f"tracking.http_retries={RETRIES}",
    )


def _job(cfg, out_dir):
    """What run_job logs, in small (as in tests/test_tracking.py): tags, metrics in two steps, an artifact, a table."""
    with mlflow_run.Tracker(cfg, out_dir, {"engine": "cpu"}) as tracker:
        tracker.log_metrics({"coordinate_processing/acc": 0.5, mlflow_run.metric_name("h", "pass@1"): 1.0})
        (out_dir / "telemetry.json").write_text('{"wall_s": 1.0}\n')
        tracker.log_artifact(out_dir / "telemetry.json")
        tracker.log_table({"prompt": ["a", "b"], "score": [1.0, 0.0]}, "samples/ds/task.json")
        tracker.log_metrics({"wall_s": 12.5})
    return tracker


def _offline_job(compose_cfg, tmp_path, slow: SlowServer):
    return _job(_slow_cfg(compose_cfg, tmp_path, slow), tmp_path / "job")


def test_a_very_slow_server_costs_one_bounded_wait_and_sync_completes_the_run_later(
    compose_cfg, tmp_path, slow_server, fresh_http_env, monkeypatch, caplog
):
    port = int(slow_server.url.rsplit(":", 1)[1])
    connections = connections_to(monkeypatch, port)
    tracker = _offline_job(compose_cfg, tmp_path, slow_server)

    # One bounded wait: one connection, one request, whose answer was awaited http_timeout_s (the timeout on its
    # socket) and timed out; after it the job stops waiting on the store. MLflow's defaults: 120 s, 7 retries.
    get_experiment = "GET /api/2.0/mlflow/experiments/get-by-name?experiment_name=text_geospatial HTTP/1.1"
    assert slow_server.requests == [get_experiment], slow_server.requests
    assert [sock.gettimeout() for sock in connections] == [TIMEOUT_S]
    (warning,) = [
        r.getMessage() for r in caplog.records if r.name == "runner.tracking.mlflow_run" and r.levelname == "WARNING"
    ]
    assert "starting the run failed" in warning and "ReadTimeoutError" in warning, warning
    assert tracker.run_id is None and not tracker.record.synced

    path = tmp_path / "job" / run_record.RECORD
    record = run_record.RunRecord.load(path)
    assert record.status == "FINISHED" and not record.synced and record.run_id is None
    assert record.metrics == METRICS
    assert record.tags["engine"] == "cpu" and "version.mlflow" in record.tags
    assert record.params["tracking.http_timeout_s"] == f"{float(TIMEOUT_S)}"
    assert record.artifacts == [("telemetry.json", None)] and record.tables == ["samples/ds/task.json"]
    assert (tmp_path / "job" / "telemetry.json").is_file()
    assert (tmp_path / "job" / "tables" / "samples" / "ds" / "task.json").is_file()
    assert run_record.pending_records(tmp_path) == [path]

    # The store answers again (here: another real store, a sqlite one; a real server's sync path is covered by
    # tests/test_tracking.py's mid-run test): sync uploads the complete run.
    store = f"sqlite:///{tmp_path}/synced.db"
    run_id = run_record.sync_record(path, store)
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert (run.info.start_time, run.info.end_time) == (record.start_time, record.end_time)
    assert run.data.metrics == METRICS
    assert run.data.params == record.params
    assert record.tags.items() <= run.data.tags.items()
    assert {a.path for a in client.list_artifacts(run_id)} == {"samples", "telemetry.json"}
    table = json.loads(open(client.download_artifacts(run_id, "samples/ds/task.json", str(tmp_path))).read())
    assert table["data"] == [["a", 1.0], ["b", 0.0]]
    assert run_record.pending_records(tmp_path) == []
    assert len(slow_server.requests) == 1  # sync went to the store it was given, not back to the slow one


def test_sync_against_a_very_slow_server_fails_in_bounded_time_with_one_message(
    compose_cfg, tmp_path, slow_server, fresh_http_env
):
    _offline_job(compose_cfg, tmp_path, slow_server)
    path = tmp_path / "job" / run_record.RECORD
    before = path.read_text()
    for name in HTTP_ENV:  # the job above set them in this process; the CLI must not inherit its bounds
        os.environ.pop(name, None)
    requests_before = len(slow_server.requests)

    try:
        result = run_cli(
            "mode=sync",
            f"tracking.uri={slow_server.url}",
            f"tracking.http_timeout_s={TIMEOUT_S}",
            f"tracking.http_retries={RETRIES}",
            f"paths.output_dir={tmp_path}",
            timeout=CLI_HANG_S,
        )
    except subprocess.TimeoutExpired as exc:  # unbounded, MLflow's defaults wait 120 s x 8 attempts
        pytest.fail(f"mode=sync still waiting on a slow tracking server after {exc.timeout:.0f} s:\n{exc.output}")

    out = result.stdout
    # One bounded wait: one request, given up after its read timeout of http_timeout_s, not retried.
    assert slow_server.requests[requests_before:] == ["POST /api/2.0/mlflow/experiments/search HTTP/1.1"]
    assert result.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (failure,) = [line for line in out.splitlines() if line.startswith("not synced:")]
    assert str(tmp_path / "job") in failure and "ReadTimeoutError" in failure, failure
    assert f"read timeout={TIMEOUT_S})" in failure, failure
    assert "error: 1 of 1 runs could not be uploaded" in out, out[-3000:]
    assert run_record.pending_records(tmp_path) == [path]
    assert path.read_text() == before  # the record is left exactly as the job wrote it
