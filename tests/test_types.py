"""The type checks of `make lint` hold: mypy over runner/, adapters/ and hydra_plugins/ with the settings in
pyproject.toml (strict on the engine interface, the schema and the result types)."""

from __future__ import annotations

import subprocess
import sys

from runner.config.resolvers import PROJECT_ROOT


def test_mypy_finds_no_type_errors():
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],  # its cache, .mypy_cache/, makes a rerun take seconds
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
