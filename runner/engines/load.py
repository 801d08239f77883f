"""Loading one engine in this process: the class named by `_target_` in conf/engine/<name>.yaml, on the GPUs
selection chose, with a load that fails on the user's settings reported as one paragraph.

The `_target_` of the engine config is the single place an engine class is named. `engine=auto` leaves it
null: selection then picks a placement (vllm, distributed, cpu or hf) and the class is the `_target_` of that
placement's own config file, conf/engine/<placement>.yaml. A user's own engine is a new YAML file there.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from runner.engines.base import Engine

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from runner.config.schema import EngineConfig, ModelConfig
    from runner.engines.selection import Selection

# Importing an engine needs torch and transformers (or vLLM) only: OmegaConf and the config schema are
# imported where configs are read, so bench/gpu_bandwidth.py runs on a machine with just torch.


class EngineLoadError(RuntimeError):
    """The engine refused the model or its settings while loading; no request was sent."""


def settings_problem(exc: BaseException) -> bool:
    """Whether an engine library's exception is one the user's settings can fix: a refused value (vLLM and
    transformers raise ValueError for those; pydantic's ValidationError is one), a missing file or package,
    memory that does not fit, or vLLM's engine core failing to start (its root cause, nearly always memory or
    an argument, is logged above it). Anything else is treated as a bug, not blamed on the settings."""
    if isinstance(exc, ValueError | OSError | ImportError | MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "engine core initialization" in text


@functools.cache
def placement_target(kind: str) -> str | None:
    """The Engine class conf/engine/<kind>.yaml names for a placement selection picked (engine=auto)."""
    from omegaconf import DictConfig, OmegaConf

    from runner.config.resolvers import CONFIG_DIR

    path = CONFIG_DIR / "engine" / f"{kind}.yaml"
    if not path.is_file():
        return None
    config = OmegaConf.load(path)
    target = config.get("_target_") if isinstance(config, DictConfig) else None
    return str(target) if target else None


def is_placement_engine(target: str | None) -> bool:
    """Whether `target` is unset or the class of one of selection's placements: the built-in engines, named in
    the summary by their placement (cpu, vllm, hf); any other class (a server, a user's own) by itself."""
    from runner.engines.selection import KINDS

    return not target or target in {placement_target(kind) for kind in KINDS}


def engine_node(engine: EngineConfig) -> DictConfig:
    """The job's engine config as the OmegaConf node an engine's `from_config` gets (runner/engines/base.py),
    with the keys `+engine.<name>=...` added: the node Hydra composed is handed on as it is; an EngineConfig made
    from it (`OmegaConf.to_object`, which keeps those keys as attributes) becomes a node of its attributes."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(engine, DictConfig):
        return engine
    return OmegaConf.create(vars(engine))


def engine_fields(engine: DictConfig) -> EngineConfig:
    """The engine node `from_config` gets, read through the schema, for the runner's own engines and helpers:
    the node Hydra composes is structured by EngineConfig, so every field is there with its type and reads by
    attribute as it does on the dataclass."""
    return cast("EngineConfig", engine)


def load_engine(selection: Selection, model_source: str, model: ModelConfig, engine: EngineConfig) -> Engine:
    """One engine in this process (a replica of several is one too), on the devices selection chose."""

    from runner.config.schema import ConfigError

    try:
        with _visible_devices(selection.devices):
            return _load(selection, model_source, model, engine)
    except (ConfigError, EngineLoadError):
        raise
    except Exception as exc:
        if not settings_problem(exc):
            raise  # a bug in the runner, the engine library or a user's engine: reported as one (runner/cli.py)
        first = (str(exc).strip().splitlines() or [""])[0][:500].rstrip(".")
        raise EngineLoadError(
            f"The {selection.kind} engine could not load model {model.name} ({model_source}): "
            f"{type(exc).__name__}: {first}. Check the model's settings (model.*) and the engine's "
            "(engine.args.*); HYDRA_FULL_ERROR=1 shows the engine's traceback."
        ) from exc


@contextmanager
def _visible_devices(devices: tuple[str, ...]) -> Iterator[None]:
    """Load on the GPUs selection chose (fewer than the mask allows when others are busy): CUDA and vLLM's
    worker processes read CUDA_VISIBLE_DEVICES as they start, during the load. The mask is put back after,
    so the next job of a sweep detects the GPUs the user gave, not the ones this job took."""
    if not devices:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def engine_class(selection: Selection, engine: EngineConfig) -> type[Engine]:
    """The Engine subclass that runs the job: `engine._target_` when set, else the `_target_` of
    conf/engine/<placement>.yaml for the placement selection picked. Checked before anything loads."""
    from hydra.utils import get_class

    from runner.config.schema import ConfigError

    target = engine._target_ or placement_target(selection.kind)
    if not target:
        raise ConfigError(
            f"conf/engine/{selection.kind}.yaml names no engine class for placement {selection.kind!r}. Give it "
            "a `_target_: package.module.EngineClass`, or name the class with engine._target_."
        )
    fix = (
        "Name an importable subclass of runner.engines.base.Engine (docs/engines.md has a minimal one), or leave "
        "engine._target_ unset to let the engine selection choose."
    )
    try:
        found = get_class(str(target))
    except Exception as exc:  # noqa: BLE001 - missing module, missing attribute, not a class: one message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"engine._target_={target} cannot be loaded ({reason}). {fix}") from None
    if not issubclass(found, Engine):
        raise ConfigError(f"engine._target_={target} is a class, but not an Engine. {fix}")
    return found


def _load(selection: Selection, model_source: str, model: ModelConfig, engine: EngineConfig) -> Engine:
    cls = engine_class(selection, engine)
    built = cls.from_config(source=model_source, model=model, engine=engine_node(engine), selection=selection)
    if not isinstance(built, Engine):
        from runner.config.schema import ConfigError

        raise ConfigError(f"{cls.__qualname__}.from_config returned {type(built).__name__}, not an Engine.")
    return built
