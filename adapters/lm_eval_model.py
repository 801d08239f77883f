"""The lm-eval bridge: an `lm_eval.api.model.TemplateLM` over any runner engine.

lm-eval hands each request type over as one list; this class keeps it that way and gives the engine
every request of a type in a single call, each with its own generation settings, so vLLM's continuous
batching sees the whole task at once (a fixed batch size makes every batch wait for its longest
sequence). In a job the engine is runner/engines/job_engine.py's, which joins these calls across the job's
datasets. Tokenisation of context/continuation pairs is lm-eval's own (`TemplateLM`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from lm_eval.api.model import TemplateLM, hash_args
from lm_eval.models.utils import handle_stop_sequences, maybe_truncate, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from runner.engines.base import SamplingSettings

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import CacheHook

    from runner.engines.base import AnswerRecorder, Completion, LogLikelihood, ProgressHook, SupportsRequests

    class _TemplateLM:
        """What the bridge takes from lm-eval's TemplateLM. The type checker reads lm-eval as Any (pyproject.toml's
        mypy overrides), and a class cannot subclass Any under --strict; at run time the base is TemplateLM."""

        cache_hook: CacheHook

        def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]: ...

else:
    _TemplateLM = TemplateLM

log = logging.getLogger(__name__)
# For runner.log only: the console's filter (runner/console/handlers.py) drops records that say so. The bridge knows the
# runner only through the engine interface (runner/engines/base.py), so it states the attribute itself.
FILE_ONLY = {"console": False}


class EngineLM(_TemplateLM):
    def __init__(
        self,
        engine: SupportsRequests,
        *,
        max_length: int,
        chat: bool = True,
        default_max_gen_toks: int = 256,
        seed: int | None = 0,
        telemetry: AnswerRecorder | None = None,
        progress: ProgressHook | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.max_length = max_length
        self.chat = chat
        self.default_max_gen_toks = default_max_gen_toks
        self.seed = seed
        # Each answer's engine pass, tokens and latency, beside the response cache (the pass itself is
        # bracketed by whoever makes the engine call: runner/engines/job_engine.py in a job).
        self.telemetry = telemetry
        self.progress = progress  # this dataset's row of the job's live display: each finished request moves it
        self.served = 0  # requests that reached the engine (the rest came from lm-eval's response cache)
        self.truncated = 0  # of those, prompts cut from the left to fit max_length (lm-eval's convention)
        # Requests the engine rejected or failed (lm-eval's cache key -> the error): answered "" (generation)
        # or -inf (log-likelihood), so scored wrong; never cached, so a rerun tries them again.
        self.failed: dict[str, str] = {}

    # --- tokens and chat templating (lm-eval builds the messages, the model's own template renders them) ---

    @property
    def eot_token_id(self) -> int:
        return cast(int, self.engine.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        tokenizer = self.engine.tokenizer
        return cast(int, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.engine.tokenizer, "name_or_path", self.engine.name)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.engine.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        rendered = self.engine.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )
        return cast(str, rendered)  # tokenize=False: the rendered text

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: object) -> list[int]:
        # A chat-templated prompt already carries its special tokens; adding BOS again would double it.
        special = (not self.chat) if add_special_tokens is None else add_special_tokens
        return cast(list[int], self.engine.tokenizer(string, add_special_tokens=special).input_ids)

    # --- the three request types ---

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        self.served += len(requests)
        self._expect(len(requests))
        eos = self.engine.tokenizer.eos_token
        prompts: list[list[int]] = []
        settings: list[SamplingSettings] = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.default_max_gen_toks)
            full = self.tok_encode(context)
            tokens, max_tokens = maybe_truncate(full, kwargs["max_gen_toks"], self.max_length, shrink_gen_toks=True)
            self.truncated += len(tokens) < len(full)
            prompts.append(tokens)
            settings.append(
                SamplingSettings(
                    max_tokens=max_tokens,
                    temperature=float(kwargs.get("temperature", 0.0)),
                    top_p=float(kwargs.get("top_p", 1.0)),
                    stop=tuple(handle_stop_sequences(kwargs["until"], eos=eos)),
                    seed=self.seed,
                )
            )
        # Longest prompts first, as lm-eval's own models order them: the engine starts the slowest requests
        # first, and memory trouble shows at once. (In a job, runner/engines/job_engine.py orders the requests of
        # every dataset together.) Results go back in request order.
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))
        results: list[str | None] = [None] * len(requests)

        def answered(position: int, completion: Completion) -> None:
            # Into lm-eval's response cache as each request finishes: a crash loses only those in flight.
            index = order[position]
            results[index] = completion.text
            if completion.error is not None:
                self.failed[hash_args("generate_until", requests[index].args)] = completion.error
            else:
                self.cache_hook.add_partial("generate_until", requests[index].args, completion.text)
            if self.telemetry is not None:
                self.telemetry.answer(hash_args("generate_until", requests[index].args), completion)
            if self.progress is not None:
                self.progress.advance(1, completion.output_tokens)

        # Each request with its own settings, all in one call: the engine batches them together.
        self.engine.generate([prompts[i] for i in order], [settings[i] for i in order], on_result=answered)
        log.info("Answered %d generate_until requests; lm-eval scores them next", len(requests), extra=FILE_ONLY)
        return cast(list[str], results)  # the engine answers every request (runner/engines/base.py)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's own tokenization of the (context, continuation) pairs, without its "Tokenizing inputs" bar:
        the job's live display counts these requests as they are scored."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **kwargs: object
    ) -> list[tuple[float, bool]]:
        self.served += len(requests)
        self._expect(len(requests))
        pairs = [self._fit(context, continuation) for _, context, continuation in requests]
        out: list[tuple[float, bool] | None] = [None] * len(requests)

        def scored(index: int, score: LogLikelihood) -> None:
            out[index] = (score.logprob, score.is_greedy)
            key = requests[index][0]
            if score.error is not None:
                self.failed[hash_args("loglikelihood", key) if key is not None else f"#{index}"] = score.error
            elif key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[index])
            if self.progress is not None:
                self.progress.advance(1, 0, len(pairs[index][0]) + len(pairs[index][1]))

        self.engine.loglikelihood(pairs, on_result=scored)
        return cast(list[tuple[float, bool]], out)  # every request scored, as above

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Keep the whole continuation and as much of the context (from the left) as the window allows."""
        room = self.max_length - len(continuation)
        if room < 1:
            raise ValueError(
                f"A continuation of {len(continuation)} tokens does not fit the model's {self.max_length}-token "
                "window; raise model.max_model_len or shorten the task's targets."
            )
        self.truncated += len(context) > room
        return context[-room:], continuation

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        # Perplexity-style scoring: the text is cut into windows of the model's length, each scored given
        # the tokens before it, as lm-eval's own models do; all windows of all texts go in one engine call.
        self.served += len(requests)
        self._expect(len(requests))
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self.engine.loglikelihood(windows), strict=True):
            totals[owner] += score.logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        if self.progress is not None:
            self.progress.advance(len(requests))
        return totals

    def _expect(self, requests: int) -> None:
        if self.progress is not None:
            self.progress.expect(requests)
