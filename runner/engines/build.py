"""The engine a job runs: one engine in this process, or N replicas in their own processes sharing the requests."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from runner.engines.base import Engine
from runner.engines.load import load_engine

if TYPE_CHECKING:
    from runner.engines.selection import Selection


def build_engine(selection: Selection, model_source: str, model: Any, engine: Any) -> Engine:
    if selection.data_parallel_size <= 1:
        return load_engine(selection, model_source, model, engine)
    from omegaconf import OmegaConf

    from runner.engines.replicas import ReplicatedEngine

    one = replace(selection, data_parallel_size=1, gpus=selection.gpus // selection.data_parallel_size, devices=())
    build = {
        "selection": one,
        "devices": selection.devices,
        "source": model_source,
        "model": OmegaConf.to_container(model, resolve=True),
        "engine": OmegaConf.to_container(engine, resolve=True),
    }
    return ReplicatedEngine(build, selection.data_parallel_size, tokenizer_source=model_source)
