"""A real sweep with one failing job: every job recorded, the failure listed, the report written.

The sweep (tests/conftest.py: Sweep) runs `-m model=smollm2_135m,tiny_llama,qwen25_7b limit=2`; the
last model's weights are not on this machine, so its job fails and the sweep must carry on.
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


def test_a_failing_job_does_not_stop_the_sweep_and_the_exit_code_says_so(sweep):
    assert sweep.result.returncode == 1, sweep.result.stdout[-5000:]
    jobs = json.loads((sweep.dir / "sweep_summary.json").read_text())
    assert [(j["job_num"], j["model"], j["status"]) for j in jobs] == [
        (0, "smollm2_135m", "FINISHED"),
        (1, "tiny_llama", "FINISHED"),
        (2, "qwen25_7b", "FAILED"),
    ]
    assert "Qwen/Qwen2.5-7B-Instruct" in jobs[2]["error"]
    out = sweep.result.stdout
    assert "1 of 3 jobs failed" in out and "job 2 (model=qwen25_7b" in out
    assert "Traceback" not in out


def test_every_job_is_a_run_that_knows_its_sweep_and_ends_finished_or_failed(sweep):
    runs = _runs(sweep.tracking_uri)
    jobs = {f"{m}/text_geospatial": n for n, m in enumerate(sweep.MODELS)}
    assert set(jobs) <= set(runs)
    for name, number in jobs.items():
        run = runs[name]
        assert run.data.tags["sweep_dir"] == str(sweep.dir) and run.data.tags["job_num"] == str(number)
        assert run.info.status == ("FAILED" if name.startswith("qwen25_7b") else "FINISHED")
    failed = runs["qwen25_7b/text_geospatial"]
    assert "not present" in failed.data.tags["error"]
    assert not any(k.endswith("/score") for k in failed.data.metrics)  # nothing that looks like a result
    for name in ("smollm2_135m/text_geospatial", "tiny_llama/text_geospatial"):
        metrics = runs[name].data.metrics
        assert 0 <= metrics["spatial_reasoning/score"] <= 1 and metrics["output_tokens_per_s"] > 0
        # MLflow's own system metrics were sampled during the job.
        assert "system/cpu_utilization_percentage" in metrics


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
    assert names == {"report.html", "report.png"}


def test_the_report_can_be_rebuilt_from_mlflow_with_one_command(sweep, tmp_path):
    result = run_cli(
        "mode=report", f"paths.output_dir={sweep.out}", f"report.sweep_dir={sweep.dir}", f"report.out_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"report: {tmp_path / 'report.html'}" in result.stdout
    assert "tiny_llama" in (tmp_path / "report.html").read_text()


def test_mode_sync_uploads_runs_the_store_missed(compose_cfg, tmp_path):
    from runner import tracking

    down = compose_cfg(
        f"paths.output_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9", "tracking.system_metrics=false"
    )
    with tracking.Tracker(down, tmp_path / "runs" / "job", {"engine": "cpu"}) as tracker:
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
