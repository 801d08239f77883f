"""The server engine's HTTP client against a scripted OpenAI-style server on loopback: what it retries (429 and
5xx, honouring Retry-After), how often (`engine.retries`), and what it refuses at once. The real `vllm serve`
answers are checked in tests/test_parity.py; a real server cannot be made to answer 503 on demand."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.engines.base import SamplingSettings
from runner.engines.server import ServerError, VLLMServerEngine

HELD = 999  # a prompt of this one token is answered only once the test lets it go (Scripted.hold)


class Scripted(ThreadingHTTPServer):
    """Answers GET /v1/models with one model, and each POST /v1/completions with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.posts = 0
        self.hold = threading.Event()  # a request whose prompt is [HELD] waits for it (at most 10 s)
        self.released: bool | None = None  # whether the held request was let go (True) or timed out


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/v1/models":
            self._send(200, {"data": [{"id": "scripted", "root": "scripted"}]})
        elif self.path == "/version":
            self._send(200, {"version": "0.32.0"})
        else:
            self._send(404, {"error": {"message": "not here"}})

    def do_POST(self) -> None:  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if payload.get("prompt") == [HELD]:
            self.server.released = self.server.hold.wait(10)
        self.server.posts += 1
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        if status == 200:
            self._send(200, {"choices": [{"text": " answer", "token_ids": [1, 2], "finish_reason": "stop"}]})
        else:  # Retry-After: 0, so the test does not wait out the backoff
            self._send(status, {"error": {"message": f"scripted {status}"}}, {"Retry-After": "0"})


@pytest.fixture
def serve(serve_http):
    return lambda statuses: serve_http(Scripted(statuses))


def _engine(server: Scripted, model_dir, retries: int) -> VLLMServerEngine:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    # One request at a time: the scripted answers go to the requests in order.
    return VLLMServerEngine(
        url, str(model_dir), served_model="scripted", retries=retries, request_timeout_s=10, max_concurrency=1
    )


def test_overloaded_answers_are_retried_and_the_request_succeeds(serve, default_model_dir):
    server = serve([503, 429])
    engine = _engine(server, default_model_dir, retries=2)
    (completion,) = engine.generate([[1, 2, 3]], SamplingSettings(max_tokens=4))
    assert (completion.text, completion.output_tokens, server.posts) == (" answer", 2, 3)


def test_retries_are_bounded_and_the_error_says_how_many_tries_and_what_the_server_said(serve, default_model_dir):
    server = serve([503, 503, 503])
    engine = _engine(server, default_model_dir, retries=1)
    with pytest.raises(ServerError, match=r"after 2 tries \(HTTP 503: scripted 503\)"):
        engine.generate([[1, 2, 3]], SamplingSettings(max_tokens=4))
    assert server.posts == 2


def test_a_refused_request_is_not_retried_and_fails_alone(serve, default_model_dir):
    server = serve([400])
    engine = _engine(server, default_model_dir, retries=2)
    refused, answered = engine.generate([[1, 2, 3], [4, 5]], SamplingSettings(max_tokens=4))
    assert (refused.finish_reason, answered.text) == ("error", " answer")
    assert "refused a request to /completions (HTTP 400: scripted 400)" in refused.error
    assert server.posts == 2  # one each: the refusal was not retried
    assert engine.stats.as_metrics()["requests_failed"] == 1


def test_each_answer_is_reported_as_it_arrives_not_when_the_last_one_is_back(serve, default_model_dir):
    # The live display counts answers as on_result reports them: the held request is let go only by the report
    # of the other one, which a pass that reports everything at the end never makes (it waited 10 s, then 0/2).
    server = serve([])
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    engine = VLLMServerEngine(url, str(default_model_dir), served_model="scripted", max_concurrency=2)
    reported = []

    def on_result(index: int, completion) -> None:
        reported.append(index)
        server.hold.set()

    engine.generate([[HELD], [1, 2, 3]], SamplingSettings(max_tokens=4), on_result=on_result)
    # released: the held request was let go by the other one's report, it did not wait out its 10 s.
    assert reported == [1, 0] and server.released is True


def test_the_engine_names_itself_with_the_vllm_the_server_reports(serve, default_model_dir):
    # What the summary's header says after `engine vllm_server` (runner/reporting/summary.py), not the platform (cpu).
    engine = _engine(serve([]), default_model_dir, retries=0)
    assert engine.describe() == f"vllm_server (vLLM 0.32.0 at {engine.url})"
