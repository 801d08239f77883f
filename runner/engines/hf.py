"""Hugging Face transformers engine: the reference implementation and the fallback (`engine=hf`).

Slower than vLLM (static batches, no paged KV cache) but it runs anywhere torch runs, and it is what
vLLM's outputs are checked against. `load_format=dummy` builds the model from its config with random
weights, for speed studies of an architecture without its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from runner.console.handlers import FILE_ONLY
from runner.engines.base import (
    Completion,
    Engine,
    Item,
    LogLikelihood,
    OnResult,
    SamplingSettings,
    every_answered,
    isolate,
    release_memory,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from runner.config.schema import ModelConfig
    from runner.engines.selection import Selection
    from runner.engines.shared_context import ContextGroup

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16", "bfloat16": "bfloat16"}


class HFEngine(Engine):
    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
        load_format: str = "auto",
        device: str | None = None,
        batch_size: int = 16,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        torch_dtype = getattr(torch, _DTYPES.get(str(dtype), "float32")) if dtype != "auto" else "auto"
        start = time.perf_counter()
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        self._tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        if load_format == "dummy":
            if seed is not None:
                torch.manual_seed(seed)
            config = AutoConfig.from_pretrained(model, **kwargs)
            with torch.device(self.device):
                self.model = AutoModelForCausalLM.from_config(
                    config, dtype=torch_dtype, trust_remote_code=trust_remote_code
                )
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **kwargs).to(self.device)
        self.model.eval()
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.stats.load_seconds = time.perf_counter() - start
        log.info(
            "Loaded %s with transformers on %s in %.1f s", model, self.device, self.stats.load_seconds, extra=FILE_ONLY
        )

    @classmethod
    def from_config(cls, *, source: str, model: ModelConfig, engine: DictConfig, selection: Selection) -> HFEngine:
        """The model's dtype, revision and load format, plus `engine.hf` (batch size, device...)."""
        from runner.config.resolvers import to_dict
        from runner.engines.load import engine_fields
        from runner.engines.vllm_args import from_hub

        options = {k: v for k, v in to_dict(engine_fields(engine).hf).items() if k != "max_length"}
        return cls(
            source,
            dtype=model.dtype,
            revision=model.revision if from_hub(model) else None,
            trust_remote_code=bool(model.trust_remote_code),
            load_format=model.load_format,
            **options,
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _batches(
        self, items: list[Item], key: Callable[[Item], int], groups: Sequence[object] | None = None
    ) -> list[list[int]]:
        """Index batches, longest first, so each batch pads little and the first one shows any OOM early.
        With `groups` (one label per item), a batch holds items of one group only (one generation setting)."""
        order = sorted(range(len(items)), key=lambda i: -key(items[i]))
        labels = groups or [None] * len(items)
        batches: list[list[int]] = []
        for label in dict.fromkeys(labels[i] for i in order):
            mine = [i for i in order if labels[i] == label]
            batches += [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        return batches

    def _generate(
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(prompts)

        def failed(index: int, error: str) -> None:
            results[index] = Completion.failed(prompts[index], error)
            on_result(index, results[index])

        def run(batch: list[int]) -> None:  # a batch holds one setting (see _batches)
            self._generate_batch(batch, prompts, settings[batch[0]], results, on_result)

        for batch in self._batches(prompts, len, groups=settings):
            isolate(batch, run, failed)  # a request the model cannot take fails alone
        return every_answered(results, "hf")

    def _generate_batch(
        self,
        batch: list[int],
        prompts: list[list[int]],
        setting: SamplingSettings,
        results: list[Completion | None],
        on_result: OnResult,
    ) -> None:
        import torch

        pad = self._tokenizer.pad_token_id
        eos = self._tokenizer.eos_token_id
        width = max(len(prompts[i]) for i in batch)
        # Left padding: every row's next token sits at the same position.
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=self.device
        )
        sample = setting.temperature > 0
        if setting.seed is not None:
            torch.manual_seed(setting.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=setting.max_tokens,
                do_sample=sample,
                temperature=setting.temperature if sample else None,
                top_p=setting.top_p if sample else None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        latency = time.perf_counter() - start
        for row, index in enumerate(batch):
            new = out[row, width:].tolist()
            if eos in new:  # generation ended at end-of-sequence: drop it and the padding after it
                new = new[: new.index(eos)]
                reason = "stop"
            else:
                reason = "length"
            text = self._tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = _cut_at_stop(text, setting.stop)
            if stopped:
                reason = "stop"
                new = self._tokenizer(text, add_special_tokens=False).input_ids
            results[index] = Completion(text, len(prompts[index]), len(new), reason, latency)
            on_result(index, results[index])

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        """One row per group of requests sharing their context and all but their last token
        (runner/engines/shared_context.py): the row's last position scores every member's last token, as
        lm-eval's own `hf` model does (`group_by="contexts"`)."""
        from runner.engines.shared_context import group_by_context

        scores: list[LogLikelihood | None] = [None] * len(requests)

        def report(index: int, score: LogLikelihood) -> None:
            scores[index] = score
            on_result(index, score)

        rows = group_by_context(requests)

        def run(batch: list[int]) -> None:
            self._score_batch([rows[r] for r in batch], requests, report)

        def failed(row: int, error: str) -> None:
            if len(rows[row].members) == 1:
                report(rows[row].members[0], LogLikelihood.failed(error))
                return
            start = len(rows)  # each choice on its own, so a bad choice fails alone
            rows.extend(rows[row].alone())
            for alone in range(start, len(rows)):
                isolate([alone], run, failed)

        for batch in self._batches(rows, lambda row: len(row.prompt)):
            isolate(batch, run, failed)
        return every_answered(scores, "hf")

    def _score_batch(
        self, rows: list[ContextGroup], requests: list[tuple[list[int], list[int]]], report: OnResult
    ) -> None:
        import torch

        pad = self._tokenizer.pad_token_id
        inputs = [row.prompt for row in rows]  # the model predicts token t from tokens < t
        width = max(len(x) for x in inputs)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in inputs], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in inputs], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        for at, row in enumerate(rows):
            first = len(row.context) - 1  # the position that predicts the continuation's first token
            # Normalised over the positions read only: a long row's whole [tokens, vocab] block is not copied.
            positions = torch.log_softmax(logits[at, first : first + len(row.prefix) + 1].float(), dim=-1)
            for index in row.members:
                target = torch.tensor(requests[index][1], device=self.device)
                logprob = positions.gather(1, target[:, None]).sum().item()
                greedy = bool((positions.argmax(dim=-1) == target).all().item())
                report(index, LogLikelihood(logprob, greedy))

    def shutdown(self) -> None:
        if getattr(self, "model", None) is None:
            return
        self.model = None
        release_memory()


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut at the first stop sequence, as vLLM does (the stop string itself is not returned)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True
