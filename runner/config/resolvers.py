"""Config helpers that must exist before Hydra composes anything (resolvers, schema), plus small utilities."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config.schema import register as register_schema
from runner.config.schema import seeds

if TYPE_CHECKING:
    from runner.config.schema import RunnerConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"

# ${project_root:} anchors every default path at the checkout, whatever the working directory is.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
# ${start_env:MLFLOW_TRACKING_URI,default}: the variable as the user set it when the process started.
# (mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI itself, so ${oc.env:} would see the previous job's.)
_START_ENV = dict(os.environ)
if not OmegaConf.has_resolver("start_env"):
    OmegaConf.register_new_resolver("start_env", lambda name, default=None: _START_ENV.get(name, default))

# ${torch_seed:${seed}}: the torch seed of lm-eval's four (runner/config/schema.py `seeds`), which the engines use.
if not OmegaConf.has_resolver("torch_seed"):
    OmegaConf.register_new_resolver("torch_seed", lambda value: seeds(value)[2])

register_schema()


def to_dict(node: object) -> dict[str, Any]:
    """A mapping config node as a plain dict, interpolations resolved (OmegaConf types the result as any
    container): an OmegaConf node, one of the schema's dataclasses (runner/config/schema.py) or a plain dict."""
    if OmegaConf.is_config(node):
        value: object = OmegaConf.to_container(node, resolve=True)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        value = dataclasses.asdict(node)
    else:
        value = node
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}: {value!r}")
    return cast(dict[str, Any], value)


def flatten(cfg: RunnerConfig | DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as one value (their string form). The same keys and values
    for the composed DictConfig and for the RunnerConfig dataclass it converts to (`to_dict` reads both)."""
    flat: dict[str, Any] = {}
    for key, value in to_dict(cfg).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, ListConfig) else value
    return flat
