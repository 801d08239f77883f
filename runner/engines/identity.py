"""The two identities of an engine: which answers it gives (the response cache's key), and which loaded
engine the next job of a sweep may reuse (the engine pool's key)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.config.schema import EngineConfig, RunnerConfig
    from runner.engines.selection import Selection


def response_cache_key(cfg: RunnerConfig, selection: Selection) -> str:
    """Model identity for the response cache: what changes answers, not how they were computed.

    Batch size, GPU count and parallelism are left out on purpose; vLLM and transformers are kept
    apart because their numerics differ outside fp32.
    """
    from runner.config.resolvers import to_dict

    model = cfg.model
    identity = {
        "model": model.path or model.repo_id,
        "gguf": to_dict(model.gguf) if model.gguf else None,
        "revision": model.revision,
        "dtype": model.dtype,
        "quantization": model.quantization,
        "load_format": model.load_format,
        "chat_template": bool(model.chat_template),
        # An engine of the user's own is its own identity; the two built-in families keep theirs.
        "engine": _custom_engine(cfg.engine) or ("hf" if selection.kind == "hf" else "vllm"),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{model.name}-{digest}"


def pool_key(cfg: RunnerConfig, selection: Selection, source: str) -> str:
    """Everything that decides what gets loaded: a sweep's next job with the same key reuses the engine.
    `cfg.engine` counts with its `+engine.<name>` keys (a user's engine reads them when it loads)."""
    from runner.config.resolvers import to_dict
    from runner.engines.load import engine_node

    settings = {
        "source": source,
        "selection": selection.kind,
        "tp": selection.tensor_parallel_size,
        "pp": selection.pipeline_parallel_size,
        "model": to_dict(cfg.model),
        "engine": to_dict(engine_node(cfg.engine)),
    }
    return json.dumps(settings, sort_keys=True, default=str)


def _custom_engine(engine: EngineConfig) -> str | None:
    """The identity of an engine that is no placement's (conf/engine/<placement>.yaml; a server is known by its
    address too), else None."""
    from runner.engines.load import is_placement_engine

    target = engine._target_
    if is_placement_engine(target):
        return None
    return f"{target} {engine.url}" if engine.url else str(target)
