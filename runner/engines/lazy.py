"""An engine that loads the model only when a request actually needs it.

With the response cache, a rerun of a finished job is answered entirely from SQLite: the model is
then never loaded, and the job costs seconds instead of a model load plus generation. The tokenizer
(needed to render prompts and to build cache keys) loads eagerly; it is cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runner.engines.base import Completion, Engine, EngineStats, LogLikelihood, OnResult, SamplingSettings

log = logging.getLogger(__name__)


# Tokenizer classes that AutoTokenizer would resolve to the generic tokenizers-backed class anyway.
_GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> Any:
    """AutoTokenizer's answer, without importing torch when a local folder names the generic class.

    `from transformers import AutoTokenizer` pulls in torch and scikit-learn (~4 s here), which would
    dominate a rerun answered from the cache; the generic class alone imports in under a second.
    """
    config = Path(source) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in _GENERIC_TOKENIZERS:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend.from_pretrained(source)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


class LazyEngine(Engine):
    def __init__(
        self, factory: Callable[[], Engine], tokenizer_source: str, *, trust_remote_code: bool = False
    ) -> None:
        super().__init__()
        self._factory = factory
        self._engine: Engine | None = None
        self._tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
        self.name = "lazy"

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def _real(self) -> Engine:
        if self._engine is None:
            self._engine = self._factory()
            self.name = self._engine.name
            # The real engine keeps the measurements from now on.
            self._engine.stats.extra.update(self.stats.extra)
            self.stats = self._engine.stats
        return self._engine

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # The real engine measures its own calls; these only forward.
    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings | Sequence[SamplingSettings],
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        return self._real().generate(prompts, settings, on_result) if prompts else []

    def loglikelihood(
        self, requests: list[tuple[list[int], list[int]]], on_result: OnResult | None = None
    ) -> list[LogLikelihood]:
        return self._real().loglikelihood(requests, on_result) if requests else []

    def _generate(  # pragma: no cover - generate() forwards before this is reached
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]:
        raise AssertionError("LazyEngine forwards generate()")

    def kv_cache_usage(self) -> float | None:
        return self._engine.kv_cache_usage() if self._engine is not None else None

    def describe(self) -> str:
        return self._engine.describe() if self._engine is not None else self.name

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    def reset_stats(self) -> EngineStats:
        """Start a new job's measurements on a loaded engine (reused across sweep jobs)."""
        fresh = EngineStats(extra=dict(self.stats.extra))
        if self._engine is not None:
            self._engine.stats = fresh
        self.stats = fresh
        return fresh
