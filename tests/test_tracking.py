"""MLflow run lifecycle against a real sqlite store."""

from __future__ import annotations

import mlflow
import pytest

from runner import tracking


def test_metric_names_lose_what_mlflow_rejects():
    assert tracking.metric_name("coordinate_processing", "acc,none") == "coordinate_processing/acc_none"
    assert tracking.metric_name("ds", "", "exact_match") == "ds/exact_match"
    assert tracking.metric_name("humaneval_offline", "pass@1") == "humaneval_offline/pass_at_1"


@pytest.fixture
def cfg(compose_cfg, tmp_path):
    return compose_cfg(f"paths.output_dir={tmp_path}")


def _runs(cfg):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")


def test_a_finished_job_is_one_finished_run_with_the_flattened_config(cfg, tmp_path):
    with tracking.mlflow_run(cfg, {"engine": "cpu"}):
        tracking.log_metrics({"coordinate_processing/acc": 0.5, tracking.metric_name("h", "pass@1"): 1.0})
    (run,) = _runs(cfg)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "smollm2_135m/text_geospatial"
    assert run.data.params["model.repo_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert run.data.params["category.datasets.coordinate_processing.num_fewshot"] == "0"
    assert run.data.tags["engine"] == "cpu"
    assert run.data.metrics["coordinate_processing/acc"] == 0.5
    assert run.data.metrics["h/pass_at_1"] == 1.0
    # Artifacts go where the config says, not into the working directory.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_an_exception_ends_the_run_failed_never_running(cfg):
    with pytest.raises(RuntimeError):
        with tracking.mlflow_run(cfg, {}):
            raise RuntimeError("engine died")
    (run,) = _runs(cfg)
    assert run.info.status == "FAILED"


def test_ctrl_c_ends_the_run_killed(cfg):
    with pytest.raises(KeyboardInterrupt):
        with tracking.mlflow_run(cfg, {}):
            raise KeyboardInterrupt
    (run,) = _runs(cfg)
    assert run.info.status == "KILLED"
