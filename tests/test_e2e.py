"""The whole path with real parts: Hydra -> vLLM (CPU build) + default model -> lm-eval -> MLflow.

The model is tiny and weak, so these tests assert on mechanics (runs, metrics, files), not on scores.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mlflow
import pytest
from conftest import SHORT_ANSWERS, run_cli

from runner.machine import allocator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory, default_model_dir):
    out = tmp_path_factory.mktemp("outputs")
    result = run_cli("limit=6", *SHORT_ANSWERS, f"paths.output_dir={out}")
    assert result.returncode == 0, result.stdout[-5000:]
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["text_geospatial"], output_format="list")
    return out, result.stdout, runs


def test_one_finished_mlflow_run_with_accuracy_and_engine_telemetry(job):
    _, _, runs = job
    (run,) = runs
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in (
        "coordinate_processing/acc",
        "coordinate_processing/parse_rate",
        "output_tokens_per_s",
        "input_tokens_per_s",
        "model_load_s",
        "wall_s",
        "peak_rss_gib",
        "kv_cache_tokens",
        "max_concurrency",
        "latency_p50_s",
        "latency_p95_s",
        "success_rate",
    ):
        assert name in metrics, name
    assert 0.0 <= metrics["coordinate_processing/acc"] <= 1.0
    assert metrics["output_tokens_per_s"] > 0 and metrics["input_tokens_per_s"] > 0
    assert metrics["requests"] == 6 * len([k for k in metrics if k.endswith("/wall_s")])
    # Every dataset's requests went to the engine together: one generation call for the whole job.
    assert metrics["generate_calls"] == 1
    assert 0 < metrics["model_load_s"] < metrics["wall_s"]
    assert 0 < metrics["latency_p50_s"] <= metrics["latency_p95_s"]
    assert metrics["peak_rss_gib"] > 0.5  # the fp32 model alone is ~0.5 GiB
    assert run.data.tags["engine"] == "cpu"
    # vLLM's CPU build runs on tcmalloc, as vLLM sets up its own engine-core process, where the machine has it
    # (unless this environment opts out with RUNNER_TCMALLOC=0, or already preloads it).
    preloads = "libtcmalloc" in os.environ.get("LD_PRELOAD", "") or allocator.preload_environment(
        os.environ, allocator.find_tcmalloc(), cpu=allocator.cpu_build()
    )
    assert run.data.tags["malloc"] == ("tcmalloc" if preloads else "system")
    assert run.data.params["limit"] == "6"


def test_the_run_carries_the_resolved_config_and_lm_eval_results(job):
    _, _, runs = job
    (run,) = runs
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    assert (artifacts / "hydra" / "config.yaml").is_file() and (artifacts / "hydra" / "overrides.yaml").is_file()
    resolved = (artifacts / "config_resolved.yaml").read_text()
    assert "name: smollm2_135m" in resolved and "${" not in resolved
    results = [json.loads(p.read_text()) for p in (artifacts / "lm_eval").rglob("results_*.json")]
    coordinate = next(r for r in results if "coordinate_processing" in r["results"])
    assert coordinate["n-samples"]["coordinate_processing"]["effective"] == 6
    assert coordinate["pretty_env_info"].startswith("PyTorch version")  # lm-eval's environment report
    assert (artifacts / "telemetry.json").is_file()
    hardware = json.loads((artifacts / "hardware.json").read_text())
    assert hardware["cpu_count"] >= 1 and hardware["engine"]["kind"] == "cpu"


def test_lm_evals_environment_report_is_built_once_per_environment(tmp_path, monkeypatch):
    import lm_eval.evaluator as evaluator

    from runner.job import evaluate

    built = []

    def lm_evals_own(storage):  # stands in for lm-eval's add_env_info (which imports torch, runs pip list)
        built.append(1)
        storage.update(pretty_env_info="PyTorch version: x", transformers_version="t", lm_eval_version="l")

    monkeypatch.setattr(evaluator, "add_env_info", lm_evals_own)
    evaluate.reuse_env_info(str(tmp_path))
    evaluate.reuse_env_info(str(tmp_path))  # a second job in the same process does not wrap it twice
    first, second = {"results": 1}, {}
    evaluator.add_env_info(first)
    evaluator.add_env_info(second)
    assert len(built) == 1 and second["pretty_env_info"] == "PyTorch version: x"
    assert (tmp_path / "env_info" / f"{evaluate.environment_key()}.json").is_file()
    assert first["results"] == 1 and "results" not in second  # only the report's keys are stored


def test_the_run_folder_holds_lm_evals_own_outputs(job):
    out, _, _ = job
    (run_dir,) = list((out / "runs").glob("*/*_text_geospatial_smollm2_135m"))
    (samples,) = list(run_dir.rglob("samples_coordinate_processing_*.jsonl"))
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(records) == 6
    assert {"doc", "target", "resps", "filtered_resps", "acc", "parse_rate"} <= set(records[0])
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "runner.log").is_file()


def test_the_summary_names_scores_throughput_and_where_things_are(job):
    out, stdout, runs = job
    assert "TEXT_GEOSPATIAL · smollm2_135m · engine cpu" in stdout
    # One load time: the live line's wait is imports plus the model load that the summary reports.
    loaded = re.search(r"loaded smollm2_135m on cpu in [\d.]+ s \(imports [\d.]+ s, model load ([\d.]+) s\)", stdout)
    assert loaded and f"model load {loaded[1]} s · wall" in stdout, stdout[-3000:]
    assert "coordinate_processing  acc" in stdout
    assert "output tok/s" in stdout and "latency p50" in stdout
    assert f"MLflow run:  {runs[0].info.run_id}" in stdout
    assert f"output dir:  {out}/runs/" in stdout
    assert "tcmalloc" not in stdout  # its report of each allocation over 1 GiB (the KV cache) stays off the console


# On vLLM, tiny_llama's dummy weights run in the shared sweep (tests/test_sweep.py).
@pytest.mark.parametrize("engine", ["hf"])
def test_dummy_weights_on_a_shipped_architecture_run_offline(tmp_path, default_model_dir, engine):
    result = run_cli(
        "model=tiny_llama", f"engine={engine}", "limit=2", "cache=false", *SHORT_ANSWERS, f"paths.output_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout[-5000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["text_geospatial"], output_format="list")
    assert run.data.tags["engine"] == engine
    assert run.data.metrics["requests"] == 10 and run.data.metrics["output_tokens"] > 0
    assert run.data.params["model.load_format"] == "dummy"


def _responses(out: Path) -> dict[str, list]:
    return {
        path.name.rsplit("_", 1)[0]: [json.loads(line)["resps"] for line in path.open()]
        for path in out.glob("runs/*/*/lm_eval/**/samples_*.jsonl")
    }


def test_the_default_job_through_a_running_vllm_server_gives_the_in_process_answers(job, vllm_server, tmp_path):
    out, _, (in_process,) = job
    result = run_cli(
        "engine=vllm_server", f"engine.url={vllm_server.url}", "limit=6", *SHORT_ANSWERS, "cache=false",
        f"paths.output_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-5000:]
    assert _responses(tmp_path) == _responses(out) and len(_responses(out)) == 5
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (served,) = mlflow.search_runs(experiment_names=["text_geospatial"], output_format="list")
    scores = {k: v for k, v in in_process.data.metrics.items() if k.endswith(("/acc", "/f1", "/score"))}
    assert scores and all(served.data.metrics[k] == v for k, v in scores.items())
    assert served.data.tags["engine"] == "server" and served.data.tags["engine_class"].endswith("VLLMServerEngine")
    # The summary names the server engine and the vLLM it reports, not the selection's kind (`engine server`).
    header = rf"engine vllm_server \(vLLM \d+\.\d+\S* at {re.escape(vllm_server.url)}\)"
    assert re.search(rf"^TEXT_GEOSPATIAL · smollm2_135m · {header}$", result.stdout, re.M), result.stdout[-3000:]
    assert served.data.metrics["server_requests"] >= 30 and served.data.metrics["output_tokens_per_s"] > 0
