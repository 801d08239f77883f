"""The command line as a user meets it: printing config, bad choices."""

from __future__ import annotations

from conftest import run_cli


def test_cfg_job_prints_the_composed_config():
    result = run_cli("--cfg", "job", "model=qwen25_7b")
    assert result.returncode == 0, result.stdout
    assert "repo_id: Qwen/Qwen2.5-7B-Instruct" in result.stdout
    assert "category:" in result.stdout


def test_unknown_model_fails_with_hydras_list_of_choices():
    result = run_cli("model=no_such_model")
    assert result.returncode != 0
    assert "Could not find 'model/no_such_model'" in result.stdout
    # Hydra lists what exists, so the user sees the fix.
    assert "Available options" in result.stdout
    assert "smollm2_135m" in result.stdout and "qwen25_7b" in result.stdout
    assert "Traceback" not in result.stdout


def test_unknown_category_fails_with_hydras_list_of_choices():
    result = run_cli("category=nope")
    assert result.returncode != 0
    assert "text_geospatial" in result.stdout
