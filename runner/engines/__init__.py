"""Engine construction: turns a selection plus model and engine config into a loaded engine."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from runner.engines.base import Completion, Engine, EngineStats, LogLikelihood, SamplingSettings

if TYPE_CHECKING:
    from runner.selection import Selection

# Importing an engine needs torch and transformers (or vLLM) only: OmegaConf and the config schema are
# imported where configs are read, so bench/gpu_bandwidth.py runs on a machine with just torch.

__all__ = [
    "Completion",
    "Engine",
    "EngineStats",
    "LogLikelihood",
    "SamplingSettings",
    "EngineLoadError",
    "build_engine",
    "engine_class",
    "max_length",
    "vllm_engine_args",
]


# The Engine class for each kind selection can pick; `engine.registry` adds kinds or replaces these.
BUILTIN_ENGINES = {
    "vllm": "runner.engines.vllm.VLLMEngine",
    "distributed": "runner.engines.vllm.VLLMEngine",
    "cpu": "runner.engines.vllm.VLLMEngine",
    "hf": "runner.engines.hf.HFEngine",
}


def registry(engine: Any) -> dict[str, str]:
    """kind -> Engine class: the built-in ones, then `engine.registry` (a config built by hand may lack it)."""
    return {**BUILTIN_ENGINES, **{str(k): str(v) for k, v in (engine.get("registry") or {}).items()}}


class EngineLoadError(RuntimeError):
    """The engine refused the model or its settings while loading; no request was sent."""


class RequestsFailedError(RuntimeError):
    """More of the job's requests failed in the engine than engine.max_failed_fraction allows."""


def settings_problem(exc: BaseException) -> bool:
    """Whether an engine library's exception is one the user's settings can fix: a refused value (vLLM and
    transformers raise ValueError for those; pydantic's ValidationError is one), a missing file or package,
    memory that does not fit, or vLLM's engine core failing to start (its root cause, nearly always memory or
    an argument, is logged above it). Anything else is treated as a bug, not blamed on the settings."""
    if isinstance(exc, ValueError | OSError | ImportError | MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "engine core initialization" in text


def from_hub(model: Any) -> bool:
    """A hub revision applies only to weights loaded by repo id (not a local, converted or dummy folder)."""
    return bool(model.get("revision")) and not (model.get("path") or model.get("gguf") or model.load_format == "dummy")


def vllm_engine_args(selection: Selection, model: Any, engine: Any) -> dict[str, Any]:
    """vLLM EngineArgs for this job: platform defaults, then the model's facts, then `engine.args` (user wins)."""
    from runner.config import to_dict

    platform = engine.gpu if selection.kind != "cpu" else engine.cpu
    args = to_dict(platform)
    max_len = min(int(args.pop("max_model_len", model.max_model_len)), int(model.max_model_len))
    args.update(
        dtype=model.dtype,
        max_model_len=max_len,
        trust_remote_code=bool(model.trust_remote_code),
        load_format=model.load_format,
    )
    if model.get("quantization"):
        args["quantization"] = model.quantization
    if from_hub(model):
        args["revision"] = model.revision
    if selection.kind == "distributed":
        args.update(
            tensor_parallel_size=selection.tensor_parallel_size,
            pipeline_parallel_size=selection.pipeline_parallel_size,
            # Processes within one node; Ray places workers when the job spans nodes.
            distributed_executor_backend="ray" if selection.nodes > 1 else "mp",
        )
    args.update(to_dict(engine.args or {}))
    world = int(args.get("tensor_parallel_size") or 1) * int(args.get("pipeline_parallel_size") or 1)
    if world > 1 and args.get("distributed_executor_backend") == "uni":
        from runner.schema import ConfigError

        # vLLM's one-process executor would start rank 0 and wait for the others forever.
        raise ConfigError(
            f"engine.args.distributed_executor_backend=uni runs one worker in this process, but the job asks for "
            f"{world} (tensor x pipeline parallel). Drop the backend to let the runner choose (mp on one node, "
            "ray across nodes), or drop the parallel sizes."
        )
    return args


def max_length(selection: Selection, model: Any, engine: Any) -> int:
    """The context window the bridge must fit prompts into, for whichever engine runs."""
    if selection.kind == "hf":
        return int(engine.hf.get("max_length") or model.max_model_len)
    return int(vllm_engine_args(selection, model, engine)["max_model_len"])


def build_engine(selection: Selection, model_source: str, model: Any, engine: Any) -> Engine:
    from omegaconf import OmegaConf

    from runner.schema import ConfigError

    if selection.data_parallel_size > 1:
        from dataclasses import replace

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
def _visible_devices(devices: tuple[str, ...]):
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


def check_engine_args(args: dict[str, Any]) -> None:
    """Names in engine.args must be vLLM EngineArgs: a typo is caught before the engine starts."""
    import dataclasses
    import difflib

    from vllm.engine.arg_utils import EngineArgs

    from runner.schema import ConfigError

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in args:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean engine.args.{close[0]}?" if close else ""
            raise ConfigError(
                f"engine.args.{name} is not a vLLM EngineArgs field (vLLM's `--{name.replace('_', '-')}`).{hint} "
                "See `vllm serve --help` for every engine argument."
            )


def engine_class(selection: Selection, engine: Any) -> type[Engine]:
    """The Engine subclass that runs the job: `engine._target_` when set (a user's own engine), else the
    one `engine.registry` names for the kind selection picked. Checked before anything loads."""
    from hydra.utils import get_class

    from runner.schema import ConfigError

    target = engine.get("_target_")
    if not target:
        target = registry(engine).get(selection.kind)
        if not target:
            raise ConfigError(
                f"No engine is registered for kind {selection.kind!r} (engine.registry). Add one "
                f"(+engine.registry.{selection.kind}=package.module.EngineClass) or name the class to use "
                "with engine._target_."
            )
    fix = (
        "Name an importable subclass of runner.engines.Engine (docs/engines.md has a minimal one), or leave "
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


def _load(selection: Selection, model_source: str, model: Any, engine: Any) -> Engine:
    cls = engine_class(selection, engine)
    built = cls.from_config(source=model_source, model=model, engine=engine, selection=selection)
    if not isinstance(built, Engine):
        from runner.schema import ConfigError

        raise ConfigError(f"{cls.__qualname__}.from_config returned {type(built).__name__}, not an Engine.")
    return built
