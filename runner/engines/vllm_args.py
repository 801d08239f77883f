"""vLLM's EngineArgs for a job: platform defaults, the model's facts, then the user's `engine.args`.

Shared by the in-process vLLM engine (runner/engines/vllm.py) and the server it can start
(runner/engines/server.py), so both run the model with the same arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.config.schema import EngineConfig, ModelConfig
    from runner.engines.selection import Selection


def from_hub(model: ModelConfig) -> bool:
    """A hub revision applies only to weights loaded by repo id (not a local, converted or dummy folder)."""
    return bool(model.revision) and not (model.path or model.gguf or model.load_format == "dummy")


def vllm_engine_args(selection: Selection, model: ModelConfig, engine: EngineConfig) -> dict[str, Any]:
    """vLLM EngineArgs for this job: platform defaults, then the model's facts, then `engine.args` (user wins)."""
    from runner.config.resolvers import to_dict

    platform = engine.gpu if selection.kind != "cpu" else engine.cpu
    args = dict(to_dict(platform))  # a copy: to_dict hands a plain dict back as it is
    max_len = min(int(args.pop("max_model_len", model.max_model_len)), int(model.max_model_len))
    args.update(
        dtype=model.dtype,
        max_model_len=max_len,
        trust_remote_code=bool(model.trust_remote_code),
        load_format=model.load_format,
    )
    if model.quantization:
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
        from runner.config.schema import ConfigError

        # vLLM's one-process executor would start rank 0 and wait for the others forever.
        raise ConfigError(
            f"engine.args.distributed_executor_backend=uni runs one worker in this process, but the job asks for "
            f"{world} (tensor x pipeline parallel). Drop the backend to let the runner choose (mp on one node, "
            "ray across nodes), or drop the parallel sizes."
        )
    return args


def max_length(selection: Selection, model: ModelConfig, engine: EngineConfig) -> int:
    """The context window the bridge must fit prompts into, for whichever engine runs."""
    if selection.kind == "hf":
        from runner.config.resolvers import to_dict

        return int(to_dict(engine.hf).get("max_length") or model.max_model_len)
    return int(vllm_engine_args(selection, model, engine)["max_model_len"])


def check_engine_args(args: dict[str, Any]) -> None:
    """Names in engine.args must be vLLM EngineArgs: a typo is caught before the engine starts."""
    import dataclasses
    import difflib

    from vllm.engine.arg_utils import EngineArgs

    from runner.config.schema import ConfigError

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in args:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean engine.args.{close[0]}?" if close else ""
            raise ConfigError(
                f"engine.args.{name} is not a vLLM EngineArgs field (vLLM's `--{name.replace('_', '-')}`).{hint} "
                "See `vllm serve --help` for every engine argument."
            )
