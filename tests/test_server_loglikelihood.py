"""The server engine's multiple-choice scoring over HTTP, against a scripted OpenAI-style server on loopback whose
"model" is a fixed function: a request per position with `logprob_token_ids` where the server reads them, each
request alone with `prompt_logprobs` where it does not (a vLLM without the field ignores it), the same scores
either way. The real `vllm serve` is compared with the in-process engine in tests/test_parity.py."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.engines.server import VLLMServerEngine

VOCAB = range(12)
REFUSED = (
    11  # a request asking to read this token is refused (HTTP 400), as vLLM refuses a token outside the vocabulary
)


def logprob(prompt: list[int], token: int) -> float:
    """The scripted model: a token's log-probability after `prompt` (not normalised; only its order matters)."""
    return -0.25 * ((sum(prompt) * 7 + token * 5) % 11) - 0.001 * token


def greedy(prompt: list[int]) -> int:
    return max(VOCAB, key=lambda t: logprob(prompt, t))


class Scripted(ThreadingHTTPServer):
    def __init__(self, reads_tokens: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reads_tokens = reads_tokens
        self.payloads: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/v1/models":
            self._send({"data": [{"id": "scripted", "root": "scripted"}]})
        else:  # no /metrics, no /version: the engine goes on without them
            self._send({"error": {"message": "not here"}}, 404)

    def do_POST(self) -> None:  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.payloads.append(payload)
        if REFUSED in (payload.get("logprob_token_ids") or []):
            return self._send({"error": {"message": f"token id {REFUSED} is out of vocabulary"}}, 400)
        prompt = payload["prompt"]
        sampled = greedy(prompt)
        choice: dict = {"text": "", "token_ids": [sampled], "finish_reason": "length"}
        if payload.get("prompt_logprobs"):  # vLLM's shape: None for the first token, then {token: logprob, rank}
            choice["prompt_logprobs"] = [None] + [
                {str(t): {"logprob": logprob(prompt[:k], t), "rank": 1 + sorted(VOCAB, key=lambda v: -logprob(prompt[:k], v)).index(t)}}  # noqa: E501
                for k, t in enumerate(prompt) if k
            ]  # fmt: skip
        if payload.get("logprobs"):
            # What vLLM returns with `return_tokens_as_token_ids`: the sampled token and, where it reads them, each
            # asked token; a server without the field returns its top-1 (the sampled token at temperature 0) only.
            asked = payload.get("logprob_token_ids") if self.server.reads_tokens else None
            top = {f"token_id:{t}": logprob(prompt, t) for t in [sampled, *(asked or [])]}
            choice["logprobs"] = {"tokens": [f"token_id:{sampled}"], "token_logprobs": [top[f"token_id:{sampled}"]],
                                  "top_logprobs": [top], "text_offset": [0]}  # fmt: skip
        self._send({"choices": [choice]})


# Choices: one-token letters after a shared context, multi-token words, a repeated context, an empty continuation
# (probability 1, as lm-eval's own models score it), and a perplexity task's long rolling window.
REQUESTS = [
    *[([3, 1, 4], [t]) for t in (2, 6, 7, 8)],  # 2 is the greedy one
    *[([2, 7], c) for c in ([1, 8], [1, 9, 2], [4], [4, 4])],
    *[([9], [t, 0]) for t in (2, 3)],
    ([5, 5], []),
    ([1], [t * 5 % 12 for t in range(100)]),
]


def expected(context: list[int], continuation: list[int]) -> tuple[float, bool]:
    prompts = [context + continuation[:k] for k in range(len(continuation))]
    return (
        sum(logprob(p, t) for p, t in zip(prompts, continuation, strict=True)),
        all(greedy(p) == t for p, t in zip(prompts, continuation, strict=True)),
    )


@pytest.mark.parametrize("reads_tokens", [True, False], ids=["reads-logprob_token_ids", "prompt_logprobs-only"])
def test_both_ways_of_scoring_give_each_requests_own_log_likelihood(serve_http, default_model_dir, reads_tokens):
    server = serve_http(Scripted(reads_tokens))
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    engine = VLLMServerEngine(url, str(default_model_dir), served_model="scripted", max_concurrency=3)
    reported: list[int] = []
    scores = engine.loglikelihood(REQUESTS, on_result=lambda i, _: reported.append(i))
    for (context, continuation), score in zip(REQUESTS, scores, strict=True):
        want_logprob, want_greedy = expected(context, continuation)
        assert score.error is None
        assert score.logprob == pytest.approx(want_logprob, abs=1e-9) and score.is_greedy == want_greedy
    assert any(s.is_greedy for s in scores[:-2]) and not all(s.is_greedy for s in scores)  # flags really compared
    assert sorted(reported) == list(range(len(REQUESTS)))  # each request reported once
    probe, *sent = server.payloads
    assert probe["logprob_token_ids"] == [0, 1]  # the first request asks whether the server reads those tokens
    if reads_tokens:
        # A request per position: the letters' shared context is one, [2, 7]'s first tokens one, then [2, 7, 1]
        # and [2, 7, 1, 9] and [2, 7, 4]; [9]'s first tokens one, then [9, 2] and [9, 3]: 8, none over its prompt.
        by_position = [p for p in sent if "logprob_token_ids" in p]
        assert len(by_position) == 8 and not any(p.get("prompt_logprobs") for p in by_position)
        assert [2, 6, 7, 8] in [sorted(p["logprob_token_ids"]) for p in by_position]  # the letters, read at once
        # The 100-token window alone, one request over its prompt, not one per token.
        (window,) = [p for p in sent if p not in by_position]
        assert window["prompt_logprobs"] == 1 and len(window["prompt"]) == 101
    else:
        assert len(sent) == len(REQUESTS) and all(p.get("prompt_logprobs") == 1 for p in sent)


def test_a_choice_the_server_refuses_fails_alone_and_its_docs_other_choices_are_scored(serve_http, default_model_dir):
    server = serve_http(Scripted(reads_tokens=True))
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    engine = VLLMServerEngine(url, str(default_model_dir), served_model="scripted")
    requests = [([3, 1, 4], [2]), ([3, 1, 4], [REFUSED]), ([3, 1, 4], [6])]  # one position reads all three
    scores = engine.loglikelihood(requests)
    assert [s.error is None for s in scores] == [True, False, True]
    assert "HTTP 400" in scores[1].error and scores[1].logprob == float("-inf")
    for index in (0, 2):
        assert (scores[index].logprob, scores[index].is_greedy) == pytest.approx(expected(*requests[index]))
    # The shared position was refused, then each choice read alone: the refused one alone fails.
    asked = [sorted(p["logprob_token_ids"]) for p in server.payloads[1:]]
    assert asked[0] == [2, 6, REFUSED] and sorted(asked[1:]) == [[2], [6], [REFUSED]]
