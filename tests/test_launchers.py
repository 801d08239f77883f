"""Sweeps beyond one process: Hydra's launcher plugins run a real 2-job sweep, both runs land in MLflow.

joblib runs jobs in parallel local processes, submitit's local executor is what SLURM runs through
(`hydra/launcher=submitit_slurm` on a cluster), and Ray's launcher runs them as Ray tasks (a local Ray
here; `hydra.launcher.ray.init.address=...` for a cluster). Each job records where it ran.
"""

from __future__ import annotations

import json
import socket

import pytest
from conftest import run_cli
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "ray"])
def test_a_two_job_sweep_through_a_launcher_plugin_lands_in_mlflow(launcher, tmp_path, default_model_dir):
    # The cheapest real jobs (debug=fast: a 14M random-weight model on transformers), on one dataset.
    result = run_cli(
        "-m",
        "category=efficiency",
        "~category.datasets.humaneval_offline",
        "~category.datasets.gsm8k",
        "debug=fast",
        "limit=1,2",
        f"hydra/launcher={launcher}",
        f"paths.output_dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["job_num"], j["status"]) for j in jobs] == [(0, "FINISHED"), (1, "FINISHED")]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("efficiency")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "job_num" in r.data.tags]
    assert sorted(r.data.params["limit"] for r in runs) == ["1", "2"]
    assert {r.info.run_id for r in runs} == {j["run_id"] for j in jobs}  # every job reached the store live
    for run in runs:
        assert run.info.status == "FINISHED" and "coordinate_processing/score" in run.data.metrics
        assert run.data.tags["launcher"] == launcher and run.data.tags["host"] == socket.gethostname()
        assert run.data.tags["sweep_dir"] == str(sweep_dir)


@pytest.mark.parametrize(
    ("preset", "target", "fields"),
    [
        ("slurm_gpu", "SlurmLauncher", {"partition": "gpu", "gpus_per_node": 1, "timeout_min": 240}),
        ("ray_cluster", "RayLauncher", {"ray.init.address": "auto", "ray.remote.num_gpus": 1}),
        ("local_parallel", "JoblibLauncher", {"n_jobs": 2}),
    ],
)
def test_the_shipped_launcher_presets_compose_onto_the_plugins(compose_cfg, preset, target, fields):
    from omegaconf import OmegaConf

    launcher = compose_cfg(f"hydra/launcher={preset}", hydra=True).hydra.launcher
    assert launcher._target_.endswith(target)
    for key, value in fields.items():
        assert OmegaConf.select(launcher, key) == value
