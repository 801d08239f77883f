"""The type checks of `make lint` hold: mypy --strict over all of runner/, adapters/ and hydra_plugins/ (the
settings in pyproject.toml), and no config object is typed Any: functions take the schema's typed slices."""

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


def test_no_config_object_is_typed_any():
    """cfg, model, engine, dataset, ... arrive as the schema's dataclasses (runner/config/schema.py) or, where
    keys outside the schema must reach an engine of your own, as an OmegaConf DictConfig: never as Any."""
    import re

    names = r"(cfg|config|composed|model|engine|dataset|category|local|paths|tracking|sandbox|ray|report|selection_cfg)"
    typed_any = re.compile(rf"\b{names}\s*:\s*Any\b")
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for folder in ("runner", "adapters", "hydra_plugins")
        for path in (PROJECT_ROOT / folder).rglob("*.py")
        if "data" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if typed_any.search(line)
    ]
    assert not found, "\n".join(found)


def test_no_function_is_longer_than_a_screen():
    """Each function of runner/, adapters/ and hydra_plugins/ reads on one screen: 60 lines, def to last line."""
    import ast

    long = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for folder in ("runner", "adapters", "hydra_plugins")
        for path in (PROJECT_ROOT / folder).rglob("*.py")
        if "data" not in path.parts
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, "\n".join(long)
