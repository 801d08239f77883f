"""The engine a job runs: one engine in this process, or N replicas in their own processes sharing the requests."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from runner.engines.base import Engine
from runner.engines.load import load_engine

if TYPE_CHECKING:
    from runner.config.schema import EngineConfig, ModelConfig
    from runner.engines.selection import Selection


def build_engine(selection: Selection, model_source: str, model: ModelConfig, engine: EngineConfig) -> Engine:
    if selection.data_parallel_size <= 1:
        return load_engine(selection, model_source, model, engine)
    from runner.config.resolvers import to_dict
    from runner.engines.load import engine_node
    from runner.engines.replicas import ReplicaBuild, ReplicatedEngine

    one = replace(selection, data_parallel_size=1, gpus=selection.gpus // selection.data_parallel_size, devices=())
    # Plain data, pickled to each replica's process, which builds its own engine from it.
    build: ReplicaBuild = {
        "selection": one,
        "devices": selection.devices,
        "source": model_source,
        "model": to_dict(model),
        "engine": to_dict(engine_node(engine)),  # with its `+engine.<name>` keys, for a user's engine
    }
    return ReplicatedEngine(build, selection.data_parallel_size, tokenizer_source=model_source)
