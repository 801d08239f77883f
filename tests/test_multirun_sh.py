"""multirun.sh's ready-made sweeps compose the jobs they promise and pass extra overrides through.

Run with `mode=plan`, so every job is composed, validated and planned by the real CLI without loading
a model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from runner.config.resolvers import PROJECT_ROOT


def _sweep(tmp_path, *args):
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "multirun.sh"), *args, "mode=plan", "output=json", f"paths.output_dir={tmp_path}"],
        cwd=tmp_path,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for status in sorted(tmp_path.glob("multirun/*/*/*/job.json")):
        job = json.loads(status.read_text())
        assert job["status"] == "FINISHED"
        jobs.append((job["category"], job["model"], sorted(o for o in job["overrides"] if o.startswith("engine"))))
    return sorted(jobs)


def test_ready_sweeps_each_category_that_can_run_here_with_its_present_models(tmp_path):
    assert _sweep(tmp_path, "ready") == [("efficiency", "smollm2_135m", []), ("text_geospatial", "smollm2_135m", [])]


def test_one_model_across_every_category_with_a_ready_dataset(tmp_path):
    assert _sweep(tmp_path, "model", "tiny_llama") == [
        ("coding", "tiny_llama", []),  # humaneval_offline ships with the project
        ("efficiency", "tiny_llama", []),
        ("text_geospatial", "tiny_llama", []),
    ]


def test_engines_compares_vllm_with_the_reference_engine_on_the_default_model(tmp_path):
    assert _sweep(tmp_path, "engines") == [
        ("text_geospatial", "smollm2_135m", ["engine=auto"]),
        ("text_geospatial", "smollm2_135m", ["engine=hf"]),
    ]


def test_an_unknown_preset_prints_the_presets_and_fails(tmp_path):
    result = subprocess.run(["bash", str(PROJECT_ROOT / "multirun.sh"), "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "./multirun.sh ready" in result.stdout


def test_ready_with_a_model_whose_weights_are_absent_says_nothing_can_run_and_fails(tmp_path):
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "multirun.sh"), "model", "qwen25_72b", "mode=plan", f"paths.output_dir={tmp_path}"],
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "Left out, model weights not here: coding/qwen25_72b" in result.stdout
    assert "Nothing this machine can run" in result.stderr and "mode=list" in result.stderr
    assert "Traceback" not in result.stderr  # one paragraph, not a stack
    assert not list(tmp_path.glob("multirun/*/*/*/job.json"))  # no job was started
