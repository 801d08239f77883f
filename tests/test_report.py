"""The MLflow comparison report, against a real sqlite store holding runs shaped like the runner's."""

from __future__ import annotations

import html
import logging
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from runner.config.resolvers import PROJECT_ROOT  # noqa: E402
from runner.reporting import (
    report,  # noqa: E402
    runs,
)

EVIL = "<script>alert('x')</script>"
CATEGORY = "text_geospatial"


@dataclass
class Store:
    uri: str
    root: Path
    sweep: str
    other_sweep: str
    ids: dict[str, str]  # short name -> run id


def _run(
    client: MlflowClient,
    experiment_id: str,
    model: str,
    engine: str,
    metrics: dict[str, float],
    *,
    start: int,
    status: str = "FINISHED",
    category: str = CATEGORY,
    tags: dict[str, str] | None = None,
) -> str:
    run = client.create_run(
        experiment_id,
        start_time=start,
        run_name=f"{model}/{category}",
        tags={"model": model, "category": category, "engine": engine, **(tags or {})},
    )
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()])
    client.set_terminated(run_id, status=status, end_time=start + 1000)
    return run_id


def _telemetry(tok_s: float | None, **extra: float) -> dict[str, float]:
    values = {"latency_p50_s": 0.5, "latency_p95_s": 0.9, "peak_rss_gib": 1.25, "model_load_s": 3.0, "wall_s": 42.0}
    values |= {"requests_total": 10.0, "requests_from_cache": 0.0 if tok_s is not None else 10.0}
    if tok_s is not None:
        values |= {"output_tokens_per_s": tok_s, "input_tokens_per_s": tok_s * 4}
    return values | extra


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    art = (root / "art").as_uri()
    geo = client.create_experiment(CATEGORY, artifact_location=f"{art}/{CATEGORY}")
    code = client.create_experiment("code", artifact_location=f"{art}/code")
    sweep = str(root / "multirun" / "2025-01-01" / "12-00-00")
    other_sweep = str(root / "multirun" / "2025-01-02" / "09-30-00")
    in_sweep = {"sweep_dir": sweep}
    t0 = 1_735_732_800_000

    ids = {}
    # Two datasets. spatial front: fast + accurate; coordinate front: fast only; evil is dominated in both.
    ids["fast"] = _run(
        client,
        geo,
        "smollm2_135m",
        "cpu",
        {"spatial_reasoning/score": 0.3, "coordinate_processing/score": 0.5, "spatial_reasoning/acc": 0.3}
        | _telemetry(50.0),
        start=t0,
        tags=in_sweep | {"job_num": "0"},
    )
    ids["accurate"] = _run(
        client,
        geo,
        "qwen2_5_0_5b",
        "cpu",
        {"spatial_reasoning/score": 0.6, "coordinate_processing/score": 0.4}
        | _telemetry(20.0, peak_gpu_memory_gib=3.5),
        start=t0 + 60_000,
        tags=in_sweep | {"job_num": "1"},
    )
    ids["evil"] = _run(
        client,
        geo,
        EVIL,
        "cpu",
        {"spatial_reasoning/score": 0.2, "coordinate_processing/score": 0.3} | _telemetry(10.0),
        start=t0 + 120_000,
        tags=in_sweep | {"job_num": "2"},
    )
    # Would dominate everything if plotted: neither may reach the plot or the front.
    ids["cached"] = _run(
        client,
        geo,
        "smollm2_360m",
        "cpu",
        {"spatial_reasoning/score": 0.9, "coordinate_processing/score": 0.9} | _telemetry(None),
        start=t0 + 180_000,
        tags=in_sweep | {"job_num": "3"},
    )
    ids["failed"] = _run(
        client,
        geo,
        "qwen2_5_0_5b",
        "cpu",
        {"spatial_reasoning/score": 0.95, "output_tokens_per_s": 1000.0},
        start=t0 + 240_000,
        status="FAILED",
        tags=in_sweep | {"job_num": "4"},
    )
    ids["other_sweep"] = _run(
        client,
        geo,
        "llama_3_2_1b",
        "vllm",
        {"spatial_reasoning/score": 0.1, "coordinate_processing/score": 0.9} | _telemetry(900.0),
        start=t0 + 300_000,
        tags={"sweep_dir": other_sweep, "job_num": "0"},
    )
    ids["old_report"] = client.create_run(
        geo, run_name="report/12-00-00", tags={"runner.report": "true", "sweep_dir": sweep}
    ).info.run_id
    client.set_terminated(ids["old_report"])
    ids["code"] = _run(
        client, code, "smollm2_135m", "hf", {"humaneval/score": 0.1} | _telemetry(5.0), start=t0, category="code"
    )
    ids["default"] = _run(client, "0", "smollm2_135m", "cpu", {"x/score": 1.0}, start=t0)
    return Store(uri, root, sweep, other_sweep, ids)


SWEEP_RUNS = {"fast", "accurate", "evil", "cached", "failed"}


def _names(store: Store, rows: list[runs.RunRow]) -> set[str]:
    by_id = {v: k for k, v in store.ids.items()}
    return {by_id[r.run_id] for r in rows}


# --------------------------------------------------------------------------------------------------- pareto_front


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 1.0)], [0]),
        ([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (1.0, 1.0), (2.0, 1.5)], [0, 1, 2]),
        ([(2.0, 2.0), (1.0, 1.0), (2.0, 2.0)], [0, 2]),  # duplicates do not dominate each other
        ([(1.0, 0.5), (2.0, 0.5)], [1]),  # equal score, faster wins
        ([(3.0, 0.2), (3.0, 0.7)], [1]),  # equal speed, better score wins
        ([(5.0, 0.1), (1.0, 0.9), (5.0, 0.1), (1.0, 0.9), (0.5, 0.5)], [0, 1, 2, 3]),
        ([(math.nan, 1.0), (1.0, 1.0), (0.5, math.nan)], [1]),
    ],
)
def test_pareto_front_keeps_exactly_the_undominated_points(points, front):
    assert report.pareto_front(points) == front


def test_importing_the_module_loads_neither_mlflow_nor_matplotlib():
    code = (
        "import sys, runner.reporting.report; "
        "print(sorted(m for m in ('mlflow', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------- collect_runs


def test_collect_reads_every_experiment_but_default_and_skips_report_runs(store):
    rows = runs.collect_runs(store.uri)
    assert _names(store, rows) == SWEEP_RUNS | {"other_sweep", "code"}
    assert [r.experiment for r in rows] == ["code"] + [CATEGORY] * 6  # grouped by experiment, then by start
    assert [r.run_id for r in rows[1:4]] == [store.ids[k] for k in ("fast", "accurate", "evil")]


def test_collect_filters_by_sweep_dir(store):
    assert _names(store, runs.collect_runs(store.uri, sweep_dir=store.sweep)) == SWEEP_RUNS
    assert _names(store, runs.collect_runs(store.uri, sweep_dir=store.sweep + "/")) == SWEEP_RUNS
    assert _names(store, runs.collect_runs(store.uri, sweep_dir=Path(store.other_sweep))) == {"other_sweep"}
    assert runs.collect_runs(store.uri, sweep_dir=str(store.root / "elsewhere")) == []


def test_collect_by_experiment_name(store, caplog):
    assert _names(store, runs.collect_runs(store.uri, experiments=["code"])) == {"code"}
    with caplog.at_level(logging.WARNING, logger="runner.reporting.runs"):
        assert runs.collect_runs(store.uri, experiments=["no_such_category"]) == []
    assert "no_such_category" in caplog.text


def test_collected_rows_carry_scores_and_telemetry(store):
    rows = {r.run_id: r for r in runs.collect_runs(store.uri, sweep_dir=store.sweep)}
    fast = rows[store.ids["fast"]]
    assert (fast.model, fast.category, fast.engine, fast.status) == ("smollm2_135m", CATEGORY, "cpu", "FINISHED")
    assert fast.run_name == f"smollm2_135m/{CATEGORY}"
    assert fast.experiment == CATEGORY
    assert fast.scores == {"coordinate_processing": 0.5, "spatial_reasoning": 0.3}  # `/acc` is not a headline
    assert (fast.output_tokens_per_s, fast.latency_p50_s, fast.wall_s) == (50.0, 0.5, 42.0)
    assert (fast.peak_memory_gib, fast.memory_kind) == (1.25, "RSS")
    assert fast.start_time is not None and fast.start_time.year == 2025
    accurate = rows[store.ids["accurate"]]
    assert (accurate.peak_memory_gib, accurate.memory_kind) == (3.5, "GPU")  # GPU memory wins over RSS
    assert rows[store.ids["cached"]].output_tokens_per_s is None
    # No throughput_source tag (runs from before it existed): measured by the engine if a throughput was logged.
    assert (fast.throughput_source, rows[store.ids["cached"]].throughput_source) == ("engine", "")
    assert rows[store.ids["failed"]].status == "FAILED"


# --------------------------------------------------------------------------------------------------- build_report


_ROW = re.compile(r'<tr( class="front")? data-run-id="([0-9a-f]+)">(.*?)</tr>', re.S)


@pytest.fixture(scope="module")
def built(store, tmp_path_factory) -> tuple[Path, Path, list[runs.RunRow]]:
    rows = runs.collect_runs(store.uri, sweep_dir=store.sweep)
    png, page = report.build_report(rows, tmp_path_factory.mktemp("report"), "Sweep <12-00-00> & co")
    return png, page, rows


def test_png_is_a_real_plot_with_the_front_drawn(built):
    from matplotlib.image import imread

    png, _, _ = built
    data = png.read_bytes()
    assert png.name == "report.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    pixels = imread(png)
    height, width = pixels.shape[:2]
    assert width > 900 and height > 400  # two dataset panels side by side
    red = (abs(pixels[..., 0] - 0xD6 / 255) < 0.02) & (pixels[..., 1] < 0.25) & (pixels[..., 2] < 0.25)
    assert red.sum() > 200  # the front's stars and step line


def test_html_lists_every_run_and_marks_exactly_the_pareto_runs(built, store):
    _, page, rows = built
    text = page.read_text(encoding="utf-8")
    table = {run_id: (bool(front), cells) for front, run_id, cells in _ROW.findall(text)}
    assert set(table) == {r.run_id for r in rows}
    starred = {run_id for run_id, (front, cells) in table.items() if front and "★" in cells}
    unstarred_with_star = {run_id for run_id, (front, cells) in table.items() if not front and "★" in cells}
    assert starred == {store.ids["fast"], store.ids["accurate"]}
    assert unstarred_with_star == set()
    assert 'title="Pareto front: coordinate_processing, spatial_reasoning"' in table[store.ids["fast"]][1]
    assert 'title="Pareto front: spatial_reasoning"' in table[store.ids["accurate"]][1]

    for r in rows:
        _, cells = table[r.run_id]
        assert html.escape(r.run_name) in cells
        for score in r.scores.values():
            assert f"{score:.4f}" in cells
    fast = table[store.ids["fast"]][1]
    assert all(v in fast for v in ("0.3000", "0.5000", "50.0", "0.50", "1.25 RSS", "42.0"))
    cached = table[store.ids["cached"]][1]
    assert "0.9000" in cached and "—" in cached  # its scores are shown, its throughput is not
    assert "FAILED" in table[store.ids["failed"]][1]
    assert "response cache" in text  # the note on why the cached run is not plotted


def test_html_is_self_contained_and_escaped(built):
    _, page, _ = built
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    assert re.findall(r'src="([^"]*)"', text) and all(
        s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', text)
    )
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "<title>Sweep &lt;12-00-00&gt; &amp; co</title>" in text


# --------------------------------------------------------------------------------------------------- logging


def test_log_report_creates_a_finished_run_with_both_artifacts(built, store):
    png, page, _ = built
    run_id = report.log_report(png, page, store.uri, CATEGORY, sweep_dir=store.sweep)
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "report/12-00-00"
    assert run.data.tags["runner.report"] == "true"
    assert run.data.tags["sweep_dir"] == store.sweep
    assert run.info.experiment_id == client.get_experiment_by_name(CATEGORY).experiment_id
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["comparisons.json", "report.html", "report.png"]
    with pytest.raises(ValueError, match="no_such"):
        report.log_report(png, page, store.uri, "no_such")


def test_write_report_builds_logs_and_is_skipped_by_later_reports(store, tmp_path, caplog):
    client = MlflowClient(store.uri)
    before = {r.info.run_id for r in client.search_runs(_experiment_ids(client))}

    paths = report.write_report(store.uri, tmp_path / "out", sweep_dir=store.sweep)
    assert paths == (tmp_path / "out" / "report.png", tmp_path / "out" / "report.html")
    assert all(p.stat().st_size > 0 for p in paths)
    assert "Evaluation report: 12-00-00" in paths[1].read_text(encoding="utf-8")

    new = [r for r in client.search_runs(_experiment_ids(client)) if r.info.run_id not in before]
    assert len(new) == 1  # the sweep's runs all sit in one experiment
    assert new[0].data.tags["runner.report"] == "true" and new[0].info.status == "FINISHED"
    assert _names(store, runs.collect_runs(store.uri, sweep_dir=store.sweep)) == SWEEP_RUNS

    assert report.write_report(store.uri, tmp_path / "quiet", experiments=["code"], log=False) is not None
    after = {r.info.run_id for r in client.search_runs(_experiment_ids(client))}
    assert after == before | {new[0].info.run_id}  # log=False logs nothing

    with caplog.at_level(logging.WARNING, logger="runner.reporting.report"):
        assert report.write_report(store.uri, tmp_path / "none", sweep_dir=str(tmp_path / "nothing")) is None
    assert "No MLflow runs" in caplog.text
    assert not (tmp_path / "none").exists()


def _experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]
