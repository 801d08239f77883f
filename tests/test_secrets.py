"""No secret from the environment ends up in anything a run writes: params, tags, logs, artifacts, stores."""

from __future__ import annotations

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

SECRETS = {
    "HF_TOKEN": "hf_PlantedFakeTokenForTheLeakTest0001",
    "HUGGING_FACE_HUB_TOKEN": "hf_PlantedFakeTokenForTheLeakTest0002",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-0003",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-0004",
    "OPENAI_API_KEY": "sk-planted-openai-key-0005",
}


def test_planted_tokens_appear_in_no_output(tmp_path, default_model_dir):
    result = run_cli(
        "category=efficiency",
        "debug=fast",
        "limit=1",
        f"paths.output_dir={tmp_path}",
        env=SECRETS,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".jsonl" for p in files)
    for path in files:  # the MLflow store, its artifacts, lm-eval's files, the log, the run record
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path}"
    for name, secret in SECRETS.items():
        assert secret not in result.stdout, f"{name} leaked into the console output"
