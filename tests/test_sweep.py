"""A real sweep with failing jobs: every job recorded, failures listed, engines reused, the report written.

The sweep (tests/conftest.py: Sweep) runs `-m model=smollm2_135m,tiny_llama,qwen25_7b limit=1,2`; the
last model's weights are not on this machine, so its jobs fail and the sweep must carry on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def _runs(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("text_geospatial")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _jobs(sweep) -> list[tuple[str, int]]:
    return [(model, limit) for model in sweep.MODELS for limit in sweep.LIMITS]


def _job_runs(sweep) -> dict[tuple[str, int], object]:
    client = MlflowClient(sweep.tracking_uri)
    experiment = client.get_experiment_by_name("text_geospatial")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "job_num" in r.data.tags]
    return {(r.data.tags["model"], int(r.data.params["limit"])): r for r in runs}


def test_failing_jobs_do_not_stop_the_sweep_and_the_exit_code_says_so(sweep):
    assert sweep.result.returncode == 1, sweep.result.stdout[-5000:]
    jobs = json.loads((sweep.dir / "sweep_summary.json").read_text())
    expected = [(n, m, "FAILED" if m == "qwen25_7b" else "FINISHED") for n, (m, _) in enumerate(_jobs(sweep))]
    assert [(j["job_num"], j["model"], j["status"]) for j in jobs] == expected
    assert "Qwen/Qwen2.5-7B-Instruct" in jobs[4]["error"]
    out = sweep.result.stdout
    assert "2 of 6 jobs failed" in out and "job 4 (model=qwen25_7b limit=1" in out
    assert "Traceback" not in out
    folders = sorted(p.name for p in sweep.dir.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert folders == [f"{n}_text_geospatial_{m}" for n, (m, _) in enumerate(_jobs(sweep))]


def test_every_job_is_a_run_that_knows_its_sweep_and_ends_finished_or_failed(sweep):
    runs = _job_runs(sweep)
    assert sorted(runs) == sorted(_jobs(sweep))
    for number, job in enumerate(_jobs(sweep)):
        run = runs[job]
        assert run.data.tags["sweep_dir"] == str(sweep.dir) and run.data.tags["job_num"] == str(number)
        assert run.data.tags["launcher"] == "basic"
        assert run.info.status == ("FAILED" if job[0] == "qwen25_7b" else "FINISHED")
    failed = runs[("qwen25_7b", 1)]
    assert "not present" in failed.data.tags["error"]
    assert not any(k.endswith("/score") for k in failed.data.metrics)  # nothing that looks like a result
    for model in ("smollm2_135m", "tiny_llama"):
        metrics = runs[(model, 1)].data.metrics
        assert 0 <= metrics["spatial_reasoning/score"] <= 1 and metrics["output_tokens_per_s"] > 0
        # MLflow's own system metrics were sampled during the job.
        assert "system/cpu_utilization_percentage" in metrics
    assert runs[("tiny_llama", 1)].data.params["model.load_format"] == "dummy"  # random weights, on vLLM


def test_consecutive_jobs_with_the_same_model_reuse_its_engine(sweep):
    runs = _job_runs(sweep)
    for model in ("smollm2_135m", "tiny_llama"):
        first, second = runs[(model, 1)].data.metrics, runs[(model, 2)].data.metrics
        assert first["engine_reused"] == 0 and first["model_load_s"] > 0
        assert second["engine_reused"] == 1 and second["model_load_s"] == 0


def test_the_sweep_ends_with_a_comparison_report_in_its_folder_and_in_mlflow(sweep):
    html = (sweep.dir / "report" / "report.html").read_text()
    png = (sweep.dir / "report" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for model in ("smollm2_135m", "tiny_llama", "qwen25_7b"):
        assert model in html  # the failed job is in the table too
    assert "FAILED" in html
    report_runs = [r for name, r in _runs(sweep.tracking_uri).items() if name.startswith("report/")]
    (report,) = report_runs
    assert report.data.tags["sweep_dir"] == str(sweep.dir)
    names = {a.path for a in MlflowClient(sweep.tracking_uri).list_artifacts(report.info.run_id)}
    assert names == {"report.html", "report.png", "comparisons.json"}


def test_every_geospatial_dataset_gets_an_error_bar_in_the_run_and_in_the_report(sweep):
    """The five datasets of the default category, micro-F1 ones included: a stderr in MLflow (the F1 ones from the
    docs' counts), a cluster-robust one where the dataset names its clusters, and an interval in the report."""
    run = _job_runs(sweep)[("smollm2_135m", 2)]
    metrics = run.data.metrics
    for dataset in ("address_parsing", "location_ner", "ner_locations"):
        assert f"{dataset}/f1_stderr" in metrics and f"{dataset}/f1_stderr_clustered" in metrics
    for dataset in ("spatial_reasoning", "coordinate_processing"):
        assert f"{dataset}/acc_stderr" in metrics and f"{dataset}/acc_stderr_clustered" in metrics
    data = json.loads((sweep.dir / "report" / "comparisons.json").read_text())
    datasets = ("spatial_reasoning", "coordinate_processing", "address_parsing", "location_ner", "ner_locations")
    for dataset in datasets:
        (interval,) = [r for r in data["datasets"][dataset]["runs"] if r["run_id"] == run.info.run_id]
        assert interval["n"] == 2 and interval["low"] is not None and interval["clustered_by"], (dataset, interval)
        assert interval["statistic"] == ("micro_f1" if dataset in datasets[2:] else "mean")


def test_the_report_can_be_rebuilt_from_mlflow_with_one_command(sweep, tmp_path):
    result = run_cli(
        "mode=report", f"paths.output_dir={sweep.out}", f"report.sweep_dir={sweep.dir}", f"report.out_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"report: {tmp_path / 'report.html'}" in result.stdout
    assert "tiny_llama" in (tmp_path / "report.html").read_text()


def test_mode_sync_uploads_runs_the_store_missed(compose_cfg, tmp_path):
    from runner.tracking import mlflow_run

    down = compose_cfg(
        f"paths.output_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9", "tracking.system_metrics=false"
    )
    with mlflow_run.Tracker(down, tmp_path / "runs" / "job", {"engine": "cpu"}) as tracker:
        tracker.log_metrics({"spatial_reasoning/score": 0.25})
    uri = f"sqlite:///{tmp_path}/later.db"
    result = run_cli("mode=sync", f"paths.output_dir={tmp_path}", f"tracking.uri={uri}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"<- {tmp_path / 'runs' / 'job'}" in result.stdout
    (run,) = _runs(uri).values()
    assert run.data.metrics["spatial_reasoning/score"] == 0.25 and run.info.status == "FINISHED"
    again = run_cli("mode=sync", f"paths.output_dir={tmp_path}", f"tracking.uri={uri}")
    assert "Nothing to sync" in again.stdout and len(_runs(uri)) == 1
    assert Path(tmp_path / "runs" / "job" / "tracking.json").exists()  # the local record stays


def test_a_job_out_of_memory_at_load_fails_alone_and_the_sweep_goes_on(tmp_path, default_model_dir):
    # Job 0's KV cache cannot hold a single block: vLLM refuses to start, as when memory runs out at load.
    only_spatial = [f"~category.datasets.{n}" for n in ("coordinate_processing", "address_parsing", "location_ner")]
    result = run_cli(
        "-m",
        "model=smollm2_135m",
        "+engine.args.kv_cache_memory_bytes=1024,1073741824",
        "limit=1",
        *only_spatial,
        "~category.datasets.ner_locations",
        "+category.datasets.spatial_reasoning.gen_kwargs.max_gen_toks=8",
        f"paths.output_dir={tmp_path}",
    )
    assert result.returncode == 1, result.stdout[-5000:]
    assert "1 of 2 jobs failed" in result.stdout and "Traceback" not in result.stdout
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [(j["job_num"], j["status"]) for j in jobs] == [(0, "FAILED"), (1, "FINISHED")]
    assert "No available memory for the cache blocks" in jobs[0]["error"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    runs = {r.data.tags["job_num"]: r for r in found if "job_num" in r.data.tags}
    assert runs["0"].info.status == "FAILED" and "No available memory" in runs["0"].data.tags["error"]
    assert runs["1"].info.status == "FINISHED" and "spatial_reasoning/score" in runs["1"].data.metrics
