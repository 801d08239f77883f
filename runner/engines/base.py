"""The small interface every engine implements, and the telemetry measured around it.

Engines take token ids, not text: the lm-eval bridge owns prompt construction (chat template,
special tokens) so every engine sees exactly the same tokens for the same request.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSettings:
    """Generation settings shared by a batch of requests (one lm-eval `gen_kwargs` group)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None = None
    latency_s: float | None = None  # queued -> last token, when the engine reports it


@dataclass(frozen=True)
class LogLikelihood:
    """log P(continuation | context) and whether greedy decoding would produce the continuation."""

    logprob: float
    is_greedy: bool


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
    extra: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        busy = self.generate_seconds or float("nan")
        metrics = {
            "model_load_s": self.load_seconds,
            "generate_s": self.generate_seconds,
            "requests": float(self.requests),
            "input_tokens": float(self.prompt_tokens),
            "output_tokens": float(self.output_tokens),
            "input_tokens_per_s": self.prompt_tokens / busy,
            "output_tokens_per_s": self.output_tokens / busy,
            "requests_per_s": self.requests / busy,
            "success_rate": self.answered / self.requests if self.requests else float("nan"),
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


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Engine(ABC):
    """One loaded model. Subclasses implement `_generate`; `generate` adds the measurements."""

    name: str = "engine"

    def __init__(self) -> None:
        self.stats = EngineStats()

    @property
    @abstractmethod
    def tokenizer(self):
        """A Hugging Face tokenizer for this model (chat template, encode/decode)."""

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Completion]:
        """Generate one completion per prompt, in order. Hands the whole list to the engine at once."""
        if not prompts:
            return []
        start = time.perf_counter()
        completions = self._generate(prompts, settings)
        self.stats.generate_seconds += time.perf_counter() - start
        self.stats.generate_calls += 1
        self.stats.requests += len(prompts)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in completions)
        self.stats.output_tokens += sum(c.output_tokens for c in completions)
        self.stats.answered += sum(c.finish_reason != "error" for c in completions)
        self.stats.latencies.extend(c.latency_s for c in completions if c.latency_s is not None)
        return completions

    def loglikelihood(self, requests: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        """Score each (context tokens, continuation tokens) pair, in order, in as few engine calls as possible."""
        if not requests:
            return []
        start = time.perf_counter()
        scores = self._loglikelihood(requests)
        self.stats.loglikelihood_seconds += time.perf_counter() - start
        self.stats.loglikelihood_requests += len(requests)
        return scores

    @abstractmethod
    def _generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Completion]: ...

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        raise NotImplementedError(f"The {self.name} engine does not score log-likelihoods.")

    def shutdown(self) -> None:  # noqa: B027 - engines without processes need no teardown
        """Release the model and any worker processes. Safe to call twice."""


def release_memory() -> None:
    """Hand a torn-down engine's memory back, so the next job (or another process) starts from baseline.

    Dropping the last reference frees the weights and KV cache inside the process, but glibc keeps
    freed heap pages mapped; `malloc_trim` returns them to the OS (~0.3 GiB more here for a 135M
    model). CUDA's caching allocator likewise keeps freed blocks until `empty_cache`.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc (musl): nothing to trim
            pass
    torch = sys.modules.get("torch")  # only an engine that imported torch has CUDA memory to give back
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
