"""The small interface every engine implements, and the telemetry measured around it.

Engines take token ids, not text: the lm-eval bridge owns prompt construction (chat template,
special tokens) so every engine sees exactly the same tokens for the same request.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

from runner.console.handlers import FILE_ONLY

if TYPE_CHECKING:  # annotations only: importing an engine stays free of OmegaConf (bench/gpu_bandwidth.py)
    from omegaconf import DictConfig

    from runner.config.schema import ModelConfig
    from runner.engines.selection import Selection

log = logging.getLogger(__name__)

# on_result(index, result): called as each request of a call is answered, so a caller can save it at once
# (the response cache) and a crash loses only the requests still in flight.
OnResult = Callable[[int, Any], None]


@dataclass(frozen=True)
class SamplingSettings:
    """Generation settings shared by a batch of requests (one lm-eval `gen_kwargs` group)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


def per_prompt(settings: SamplingSettings | Sequence[SamplingSettings], n: int) -> list[SamplingSettings]:
    """One SamplingSettings per prompt, whichever form a caller gave."""
    if isinstance(settings, SamplingSettings):
        return [settings] * n
    settings = list(settings)
    if len(settings) != n:
        raise ValueError(f"{len(settings)} sampling settings for {n} prompts")
    return settings


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None = None  # "error": the engine rejected or failed this one request (see `error`)
    latency_s: float | None = None  # queued -> last token, when the engine reports it
    error: str | None = None  # why it failed; the bridge scores it as a wrong answer and never caches it

    @classmethod
    def failed(cls, prompt: list[int], error: str) -> Completion:
        return cls("", len(prompt), 0, "error", None, error)


@dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context) and whether greedy decoding would produce the continuation."""

    logprob: float
    is_greedy: bool
    error: str | None = None  # the engine failed this one request: -inf, never the greedy choice

    @classmethod
    def failed(cls, error: str) -> LogLikelihood:
        return cls(float("-inf"), False, error)


@dataclass
class EngineStats:
    """Counters measured around engine calls (never parsed from engine logs)."""

    load_seconds: float = 0.0
    generate_seconds: float = 0.0
    generate_calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    answered: int = 0  # requests that came back with a completion
    latencies: list[float] = field(default_factory=list)
    loglikelihood_seconds: float = 0.0
    loglikelihood_requests: int = 0
    loglikelihood_failed: int = 0
    first_error: str | None = None  # the first failed request's error, for the job's message
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.requests - self.answered + self.loglikelihood_failed

    def as_metrics(self) -> dict[str, float]:
        busy = self.generate_seconds or float("nan")
        metrics = {
            "model_load_s": self.load_seconds,
            "generate_s": self.generate_seconds,
            "requests": float(self.requests),
            "generate_calls": float(self.generate_calls),  # engine passes: one per job with every dataset's requests
            "input_tokens": float(self.prompt_tokens),
            "output_tokens": float(self.output_tokens),
            "input_tokens_per_s": self.prompt_tokens / busy,
            "output_tokens_per_s": self.output_tokens / busy,
            "requests_per_s": self.requests / busy,
            "success_rate": self.answered / self.requests if self.requests else float("nan"),
            # Requests the engine rejected or failed, of either kind: each scored as a wrong answer.
            "requests_failed": float(self.failed),
            **self.extra,
        }
        if self.loglikelihood_requests:
            metrics["loglikelihood_requests"] = float(self.loglikelihood_requests)
            metrics["loglikelihood_s"] = self.loglikelihood_seconds
        if self.latencies:
            ordered = sorted(self.latencies)
            metrics["latency_mean_s"] = sum(ordered) / len(ordered)
            metrics["latency_p50_s"] = _percentile(ordered, 50)
            metrics["latency_p95_s"] = _percentile(ordered, 95)
        return metrics


def describe(exc: BaseException) -> str:
    """One failed request's error, as kept in its per-sample row."""
    return f"{type(exc).__name__}: {str(exc).strip()[:500]}"


def isolate(batch: list[int], run: Callable[[list[int]], None], fail: Callable[[int, str], None]) -> None:
    """Run a batch of requests; if the engine raises, run them one at a time, so a request the engine
    cannot take fails alone (`fail(index, error)`) and the others are answered."""
    try:
        run(batch)
    except Exception as exc:  # noqa: BLE001 - which request caused it is found below
        if len(batch) == 1:
            fail(batch[0], describe(exc))
            return
        for index in batch:
            isolate([index], run, fail)


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class SupportsRequests(Protocol):
    """What the lm-eval bridge (adapters/lm_eval_model.py) calls: an Engine, or the job's one pass over an
    Engine that the datasets share (runner/engines/job_engine.py JobEngine)."""

    @property
    def name(self) -> str: ...

    @property
    def tokenizer(self) -> Any: ...

    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings | Sequence[SamplingSettings],
        on_result: OnResult | None = None,
    ) -> list[Completion]: ...

    def loglikelihood(
        self, requests: list[tuple[list[int], list[int]]], on_result: OnResult | None = None
    ) -> list[LogLikelihood]: ...


class ProgressHook(Protocol):
    """What the lm-eval bridge tells the job about one dataset's requests (runner/console/progress.py's dataset row):
    how many it is about to send, and each one answered, as it is answered."""

    def expect(self, requests: int) -> None: ...

    def advance(self, requests: int = 1, output_tokens: int = 0, input_tokens: int = 0) -> None: ...


class AnswerRecorder(Protocol):
    """Keeps each generated answer's tokens and latency under lm-eval's cache key for it (beside the response
    cache: runner/job/cached_telemetry.py), so a job answered from the cache still reports its throughput."""

    def answer(self, key: str, completion: Completion) -> None: ...


class Engine(ABC):
    """One loaded model. Subclasses implement `_generate`; `generate` adds the measurements."""

    name: str = "engine"

    def __init__(self) -> None:
        self.stats = EngineStats()

    @classmethod
    def from_config(cls, *, source: str, model: ModelConfig, engine: DictConfig, selection: Selection) -> Self:
        """How the runner builds this engine for a job (the class `engine._target_` names).

        `source` is the model's local folder or hub id. `model` is the job's model config (runner/config/schema.py
        ModelConfig: read its fields as attributes). `engine` is the job's engine config node itself, an OmegaConf
        DictConfig: it has every EngineConfig field, plus the keys given with `+engine.<anything>=...`, which
        reach an engine of your own only here (`engine.get("answer", "I don't know.")`). `selection` is what
        runner/engines/selection.py chose (kind, GPUs, parallel sizes). The default passes `source` alone, so a
        subclass whose constructor takes the model's folder needs nothing more. The runner calls this,
        not the constructor, so an engine keeps a plain constructor for use outside the runner.
        """
        # Engine's own constructor takes nothing; the subclasses this default serves take the folder.
        return cast(Callable[[str], Self], cls)(source)

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer for this model (chat template, encode/decode)."""

    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings | Sequence[SamplingSettings],
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        """Generate one completion per prompt, in order. `settings` is one SamplingSettings for all, or one
        per prompt. Hands the whole list to the engine at once; `on_result(i, completion)` is called for
        each as it is answered (engines that cannot stream call it for all of them at the end)."""
        if not prompts:
            return []
        each = per_prompt(settings, len(prompts))
        log.info(
            "%s engine: generating %d requests, up to %d new tokens each",
            self.name,
            len(prompts),
            max(s.max_tokens for s in each),
            extra=FILE_ONLY,
        )
        start = time.perf_counter()
        completions = _reporting(lambda report: self._generate(prompts, each, report), on_result)
        self.stats.generate_seconds += time.perf_counter() - start
        self.stats.generate_calls += 1
        self.stats.requests += len(prompts)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.stats.output_tokens += sum(c.output_tokens for c in completions)
        self.stats.answered += sum(c.finish_reason != "error" for c in completions)
        self._first_error(c.error for c in completions)
        self.stats.latencies.extend(c.latency_s for c in completions if c.latency_s is not None)
        return completions

    def loglikelihood(
        self, requests: list[tuple[list[int], list[int]]], on_result: OnResult | None = None
    ) -> list[LogLikelihood]:
        """Score each (context tokens, continuation tokens) pair, in order, in as few engine calls as possible."""
        if not requests:
            return []
        log.info("%s engine: scoring %d log-likelihood requests", self.name, len(requests), extra=FILE_ONLY)
        start = time.perf_counter()
        scores = _reporting(lambda report: self._loglikelihood(requests, report), on_result)
        self.stats.loglikelihood_seconds += time.perf_counter() - start
        self.stats.loglikelihood_requests += len(requests)
        self.stats.loglikelihood_failed += sum(s.error is not None for s in scores)
        self._first_error(s.error for s in scores)
        return scores

    def _first_error(self, errors: Iterable[str | None]) -> None:
        if self.stats.first_error is None:
            self.stats.first_error = next((e for e in errors if e), None)

    # Subclasses implement these; `on_result` may be called as requests finish (see `generate`).
    # `_generate` gets one SamplingSettings per prompt.
    @abstractmethod
    def _generate(
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]: ...

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        raise NotImplementedError(f"The {self.name} engine does not score log-likelihoods.")

    def kv_cache_usage(self) -> float | None:
        """The share of the KV cache in use right now (0..1), for the live display; None where not reported."""
        return None

    def describe(self) -> str:
        """How the summary's header names an engine outside the registry (vllm_server, your own `engine._target_`):
        its name, and what runs behind it where it knows (`vllm_server (vLLM 0.32.0 at http://host:8000/v1)`)."""
        return self.name

    def shutdown(self) -> None:  # noqa: B027 - engines without processes need no teardown
        """Release the model and any worker processes. Safe to call twice."""


Result = TypeVar("Result", Completion, LogLikelihood)
Item = TypeVar("Item")


def every_answered(results: list[Item | None], engine: str) -> list[Item]:
    """A call's results, every slot filled: each request was answered, or failed alone."""
    filled = [r for r in results if r is not None]
    if len(filled) != len(results):
        missing = len(results) - len(filled)
        raise RuntimeError(f"the {engine} engine left {missing} of {len(results)} requests unanswered")
    return filled


def _reporting(call: Callable[[OnResult], list[Result]], on_result: OnResult | None) -> list[Result]:
    """Run an engine call; make sure `on_result` saw every result exactly once, streamed or not."""
    reported: set[int] = set()

    def report(index: int, result: Any) -> None:
        if index not in reported:
            reported.add(index)
            if on_result is not None:
                on_result(index, result)

    results = call(report)
    for index, result in enumerate(results):
        report(index, result)
    return results


def release_memory() -> None:
    """Hand a torn-down engine's memory back, so the next job (or another process) starts from baseline.

    Dropping the last reference frees the weights and KV cache inside the process, but glibc keeps
    freed heap pages mapped; `malloc_trim` returns them to the OS (~0.3 GiB more here for a 135M
    model). CUDA's caching allocator likewise keeps freed blocks until `empty_cache`. The engine's imports
    were frozen (runner/machine/gc_freeze.py): unfrozen first, or the collector would skip garbage frozen with them.
    """
    gc.unfreeze()
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc (musl): nothing to trim
            pass
    torch = sys.modules.get("torch")  # only an engine that imported torch has CUDA memory to give back
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
