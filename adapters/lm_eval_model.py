"""The lm-eval bridge: an `lm_eval.api.model.LM` over any runner engine.

lm-eval hands each request type over as one list; this class keeps it that way and gives the engine
every request of a generation-settings group in a single call, so vLLM's continuous batching sees the
whole task at once (a fixed batch size makes every batch wait for its longest sequence).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lm_eval.api.model import LM
from lm_eval.models.utils import handle_stop_sequences, maybe_truncate, normalize_gen_kwargs

from runner.engines.base import SamplingSettings

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from runner.engines.base import Engine

log = logging.getLogger(__name__)


class EngineLM(LM):
    def __init__(
        self,
        engine: Engine,
        *,
        max_length: int,
        chat: bool = True,
        default_max_gen_toks: int = 256,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.max_length = max_length
        self.chat = chat
        self.default_max_gen_toks = default_max_gen_toks
        self.seed = seed

    # --- chat templating (lm-eval builds the messages, the model's own template renders them) ---

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.engine.tokenizer, "name_or_path", self.engine.name)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.engine.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.engine.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    def tok_encode(self, text: str) -> list[int]:
        # A chat-templated prompt already carries its special tokens; adding BOS again would double it.
        return self.engine.tokenizer(text, add_special_tokens=not self.chat).input_ids

    # --- the three request types ---

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        eos = self.engine.tokenizer.eos_token
        groups: dict[SamplingSettings, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.default_max_gen_toks)
            tokens, max_tokens = maybe_truncate(
                self.tok_encode(context), kwargs["max_gen_toks"], self.max_length, shrink_gen_toks=True
            )
            settings = SamplingSettings(
                max_tokens=max_tokens,
                temperature=float(kwargs.get("temperature", 0.0)),
                top_p=float(kwargs.get("top_p", 1.0)),
                stop=tuple(handle_stop_sequences(kwargs["until"], eos=eos)),
                seed=self.seed,
            )
            groups.setdefault(settings, []).append((index, tokens))

        results: list[str | None] = [None] * len(requests)
        for settings, items in groups.items():
            completions = self.engine.generate([tokens for _, tokens in items], settings)
            for (index, _), completion in zip(items, completions, strict=True):
                results[index] = completion.text
                self.cache_hook.add_partial("generate_until", requests[index].args, completion.text)
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            f"The {self.engine.name} engine serves generate_until tasks only so far; "
            "log-likelihood (multiple-choice) tasks are not supported yet. Pick generation tasks."
        )

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        raise NotImplementedError(
            f"The {self.engine.name} engine serves generate_until tasks only so far; "
            "perplexity (loglikelihood_rolling) tasks are not supported yet."
        )
