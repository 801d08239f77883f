"""Security defaults: remote model code runs only where a model's config opts in, servers listen on loopback."""

from __future__ import annotations

import subprocess

from conftest import PROJECT_ROOT

from runner.engines.selection import Selection
from runner.engines.vllm_args import vllm_engine_args


def test_remote_code_is_trusted_only_where_a_model_config_opts_in(compose_cfg):
    names = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml"))
    trusted = []
    for name in names:
        cfg = compose_cfg(f"model={name}")
        args = vllm_engine_args(Selection("vllm", "test", gpus=1), cfg.model, cfg.engine)
        if args["trust_remote_code"]:
            trusted.append(name)
    assert trusted == ["deepseek_coder_v2_lite"]  # its config says why; every other model loads without it
    # A model given by path alone (no config of ours) does not run remote code either.
    cfg = compose_cfg("model.path=/some/folder", "model.name=custom")
    assert vllm_engine_args(Selection("cpu", "test"), cfg.model, cfg.engine)["trust_remote_code"] is False


def test_the_mlflow_ui_listens_on_loopback_only():
    command = subprocess.run(["make", "-n", "mlflow-ui"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert command.returncode == 0, command.stderr
    assert "--host 127.0.0.1" in command.stdout and "0.0.0.0" not in command.stdout
