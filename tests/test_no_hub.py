"""The user's real environment: no HF_HUB_OFFLINE (the Makefile and conftest set it; most users do not) and no
route to the hub (air-gapped clusters, proxies, hub outages). The hub is a closed loopback port, which refuses
at once, so a test fails on any retry storm or traceback rather than waiting on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import HUB_OFFLINE_VARS, PROJECT_ROOT, dead_hub_env, run_cli

RETRIES = ("Retrying in", "[Retry ")  # huggingface_hub's backoff lines


def _assert_quiet(output: str) -> None:
    assert "Traceback" not in output, output[-4000:]
    assert not any(marker in output for marker in RETRIES), output[-4000:]


def _run(tmp_path: Path, *args: str):
    env = dead_hub_env(tmp_path / "hub")
    return run_cli(*args, f"paths.output_dir={tmp_path}/out", env=env, unset=HUB_OFFLINE_VARS)


def test_a_hub_model_not_here_is_one_paragraph_when_the_hub_cannot_be_reached(tmp_path):
    # The mission's own first command, on a machine without the weights and without a route to the hub.
    result = _run(tmp_path, "category=coding", "model=qwen25_7b")
    assert result.returncode == 2, result.stdout[-4000:]
    _assert_quiet(result.stdout)
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stdout[-4000:]
    assert "weights for Qwen/Qwen2.5-7B-Instruct are not present" in errors[0]
    assert "huggingface-cli download Qwen/Qwen2.5-7B-Instruct" in errors[0]  # the same fix offline mode names
    assert "cannot be reached" in errors[0] and "127.0.0.1" in errors[0]  # and why it cannot download them
    (log,) = (tmp_path / "out").glob("runs/*/*/runner.log")
    _assert_quiet(log.read_text())


@pytest.mark.parametrize("mode", ["plan", "list", "doctor"])
def test_plan_list_and_doctor_answer_without_the_hub(tmp_path, mode):
    result = _run(tmp_path, f"mode={mode}", "category=coding", "model=qwen25_7b")
    assert result.returncode in (0, 1) if mode == "doctor" else result.returncode == 0, result.stdout[-4000:]
    _assert_quiet(result.stdout)
    if mode == "doctor":  # says which of the two it is: offline by setting, or online but unreachable
        assert "hub access" in result.stdout and "unreachable" in result.stdout, result.stdout


def _cache_snapshot(hub_cache: Path, repo_id: str, files: list[Path]) -> str:
    """A model in the HF cache laid out as huggingface_hub writes it: blobs aside, a snapshot, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in files:
        shutil.copyfile(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_a_cached_hub_model_runs_offline_when_the_hub_cannot_be_reached(tmp_path, default_model_dir):
    # debug=fast's model (random weights on a shipped architecture) with its config and tokenizer in the HF
    # cache: the job loads it by repo id, as a cached hub model, with the hub dead and offline mode not set.
    tokenizer = [default_model_dir / f for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")]
    config = PROJECT_ROOT / "runner" / "catalog" / "architectures" / "tiny_llama" / "config.json"
    _cache_snapshot(tmp_path / "hub", "runner-architectures/tiny_llama", [config, *tokenizer])
    result = _run(tmp_path, "debug=fast", "~category.datasets.location_ner", "~category.datasets.ner_locations")
    assert result.returncode == 0, result.stdout[-4000:]
    _assert_quiet(result.stdout)
    (job,) = (tmp_path / "out").glob("runs/*/*/")
    _assert_quiet((job / "runner.log").read_text())
    record = json.loads((job / "tracking.json").read_text())
    assert record["status"] == "FINISHED"
    # Loaded by repo id from the cached snapshot, not from the shipped architecture's folder.
    assert record["tags"]["weights.source"] == "runner-architectures/tiny_llama", record["tags"]
