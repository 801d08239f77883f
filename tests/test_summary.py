"""The end-of-job summary: headline rows by default, every metric with summary=full and in summary.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.engines.selection import Selection
from runner.job.results import DatasetResult, JobResult
from runner.reporting.summary import SUMMARY_FILE, print_summary

# (dataset, headline metric, its task entry, other metrics); each task's metrics get a stderr and an n.
DATASETS = {
    "spatial_reasoning": ("acc", ["acc_k1", "acc_k2", "parse_rate"]),
    "coordinate_processing": ("acc", ["parse_rate", "acc_utm_forward", "acc_further_north"]),
    "address_parsing": ("f1", ["precision", "recall", "exact_match", "parse_rate"]),
    "location_ner": ("f1", ["precision", "recall", "parse_rate"]),
    "ner_locations": ("f1", ["loc_f1", "per_f1", "org_f1", "precision", "recall", "parse_rate"]),
}
TELEMETRY = {
    "requests": 500.0,
    "requests_total": 500.0,
    "requests_from_cache": 0.0,
    "engine_loaded": 1.0,
    "engine_reused": 0.0,
    "requests_truncated": 0.0,
    "output_tokens_per_s": 812.4,
    "input_tokens_per_s": 9120.0,
    "requests_per_s": 20.5,
    "latency_p50_s": 0.41,
    "latency_p95_s": 1.2,
    "model_load_s": 3.2,
    "wall_s": 61.0,
    "peak_rss_gib": 2.5,
    "kv_cache_tokens": 131072.0,
}


def dataset(name: str, headline: str, others: list[str], n: int = 100) -> DatasetResult:
    metrics: dict[str, float] = {}
    scored: dict[str, int] = {}
    for i, metric in enumerate([headline, *others]):
        metrics[metric] = 0.1 + i / 100
        metrics[f"{metric}_stderr"] = 0.01 + i / 1000
        scored[metric] = n if i % 2 == 0 else n - 10 - i  # subgroup metrics scored on fewer docs
    return DatasetResult(
        name,
        {name: metrics},
        {name: n},
        wall_seconds=1.0,
        score=metrics[headline],
        metric_samples={name: scored},
    )


def make_job(tmp_path: Path, telemetry: dict | None = None, **overrides) -> JobResult:
    results = [dataset(name, headline, others) for name, (headline, others) in DATASETS.items()]
    fields = {
        "run_id": "abc123",
        "synced": True,
        "out_dir": tmp_path / "run",
        "selection": Selection(kind="cpu", reason="no GPU"),
        "datasets": results,
        "telemetry": TELEMETRY | (telemetry or {}),
        "skipped": {},
    }
    return JobResult(**(fields | overrides))


def make_cfg(summary: str = "short"):
    datasets = {name: {"name": name, "tasks": [name], "metric": headline} for name, (headline, _) in DATASETS.items()}
    return OmegaConf.create(
        {
            "summary": summary,
            "category": {"name": "text_geospatial", "label": "TEXT_GEOSPATIAL", "datasets": datasets},
            "model": {"name": "smollm2_135m"},
            "tracking": {"experiment": "text_geospatial", "uri": "sqlite:///mlflow.db"},
        }
    )


def summary_of(job: JobResult, cfg, capsys) -> list[str]:
    print_summary(job, cfg)
    return capsys.readouterr().out.splitlines()


def rows_of(lines: list[str], name: str) -> list[list[str]]:
    return [line.split() for line in lines if line.split()[:1] == [name] or line.startswith(f"{name}/")]


def test_short_summary_has_one_headline_row_per_dataset(tmp_path, capsys):
    job = make_job(tmp_path)
    lines = summary_of(job, make_cfg(), capsys)
    assert "TEXT_GEOSPATIAL · smollm2_135m · engine cpu" in lines
    for result in job.datasets:
        headline = DATASETS[result.name][0]
        (row,) = rows_of(lines, result.name)  # exactly one row
        # dataset, metric, value ± stderr, n (the docs the headline metric was scored on)
        assert row == [result.name, headline, "0.1000", "±", "0.0100", "100"]
    assert not any("precision" in line or "parse_rate" in line for line in lines)  # other metrics: summary.md


def test_an_engine_chosen_by_class_is_named_with_its_build_in_the_header_and_in_summary_md(tmp_path, capsys):
    # engine=vllm_server started on this CPU machine: selection.kind is the platform (cpu), not the engine.
    served = "vllm_server (vLLM 0.32.0 CPU build, started by the runner)"
    job = make_job(tmp_path, engine=served)
    lines = summary_of(job, make_cfg(), capsys)
    assert f"TEXT_GEOSPATIAL · smollm2_135m · engine {served}" in lines
    markdown = (tmp_path / "run" / SUMMARY_FILE).read_text()
    assert markdown.startswith(f"# TEXT_GEOSPATIAL · smollm2_135m · engine {served}")


def test_a_dataset_without_its_headline_metric_says_so(tmp_path, capsys):
    job = make_job(tmp_path)
    broken = job.datasets[2]
    broken.metrics = {broken.name: {"recall": 0.5}}
    broken.score = None
    lines = summary_of(job, make_cfg(), capsys)
    (row,) = rows_of(lines, "address_parsing")
    assert row == ["address_parsing", "f1", "no", "score:", "not", "reported", "by", "lm-eval", "-"]
    assert "| address_parsing | recall | 0.5000 |  |  | 100 |" in (job.out_dir / SUMMARY_FILE).read_text()


def test_short_summary_fits_in_a_glance(tmp_path, capsys):
    # The worst case of a 5-dataset job: a skipped dataset, truncated prompts, an unsynced run.
    job = make_job(
        tmp_path,
        telemetry={"requests_truncated": 3.0, "peak_gpu_memory_gib": 14.2},
        skipped={"hendrycks_math500": "not available offline: not in the HF cache"},
        synced=False,
    )
    lines = summary_of(job, make_cfg(), capsys)
    assert len(lines) <= 18, "\n".join(lines)
    telemetry = lines[lines.index("", 1) + 1 :]  # after the blank line that ends the scores
    assert len(telemetry) <= 6  # five lines, plus the truncation warning
    assert any(line.startswith("warning: 3 prompts were longer than the context window") for line in telemetry)
    assert "skipped hendrycks_math500: not available offline: not in the HF cache" in lines


def test_short_summary_keeps_every_telemetry_fact(tmp_path, capsys):
    job = make_job(tmp_path, telemetry={"peak_gpu_memory_gib": 14.2})
    text = "\n".join(summary_of(job, make_cfg(), capsys))
    assert "requests: 500, 0 from the response cache · engine loaded" in text
    assert "throughput: 812.4 output tok/s, 9120.0 input tok/s, 20.50 req/s · latency p50 0.41 s, p95 1.20 s" in text
    assert "model load 3.2 s · wall 61.0 s · peak RSS 2.50 GiB · peak GPU memory 14.20 GiB · KV cache 131072" in text
    assert "MLflow run:  abc123 (experiment 'text_geospatial', store sqlite:///mlflow.db)" in text
    assert f"output dir:  {job.out_dir} · every metric with its n: summary.md" in text


def test_cached_throughput_and_unsynced_run_are_named(tmp_path, capsys):
    cached = {"requests": 0.0, "requests_from_cache": 500.0, "engine_loaded": 0.0, "cached_answers_with_telemetry": 1.0}
    job = make_job(tmp_path, telemetry=cached, synced=False)
    text = "\n".join(summary_of(job, make_cfg(), capsys))
    assert "requests: 500, 500 from the response cache · engine not loaded: every answer came from the cache" in text
    assert "throughput (from the response cache, measured when those answers were generated): 812.4" in text
    assert f"the run is kept in {job.out_dir / 'tracking.json'}" in text and "mode=sync" in text


def test_full_summary_prints_every_metric_with_its_n(tmp_path, capsys):
    job = make_job(tmp_path)
    lines = summary_of(job, make_cfg("full"), capsys)
    for result in job.datasets:
        rows = {row[1]: row for row in rows_of(lines, result.name)}
        expected = [m for m in result.metrics[result.name] if not m.endswith("_stderr")]
        assert sorted(rows) == sorted(expected)
        for metric, n in result.metric_samples[result.name].items():
            assert rows[metric][-1] == str(n)  # each metric's own n, not the task's
    assert "MLflow run:  abc123" in "\n".join(lines)


def test_summary_md_holds_every_metric_with_its_n_and_the_telemetry(tmp_path, capsys):
    job = make_job(tmp_path, skipped={"gsm8k": "not available offline"})
    summary_of(job, make_cfg(), capsys)
    text = (job.out_dir / SUMMARY_FILE).read_text()
    for result in job.datasets:
        metrics = result.metrics[result.name]
        for metric, n in result.metric_samples[result.name].items():
            row = f"| {result.name} | {metric} | {metrics[metric]:.4f} | {metrics[metric + '_stderr']:.4f} |  | {n} |"
            assert row in text
    assert "| ner_locations | f1 | 0.1000 ± 0.0100 | 100 |" in text  # the headline table
    assert "- gsm8k: not available offline" in text
    assert "| kv_cache_tokens | 131072 |" in text and "| wall_s | 61 |" in text
    assert "requests: 500, 0 from the response cache" in text


def test_a_group_headline_counts_the_samples_of_its_tasks(tmp_path, capsys):
    group = DatasetResult(
        "mmlu_pro",
        {"mmlu_pro": {"exact_match": 0.4, "exact_match_stderr": 0.02}, "mmlu_pro_law": {"exact_match": 0.3}},
        {"mmlu_pro_law": 30, "mmlu_pro_math": 70},
        wall_seconds=1.0,
        score=0.4,
    )
    cfg = make_cfg()
    cfg.category.datasets = {"mmlu_pro": {"name": "mmlu_pro", "tasks": ["mmlu_pro"], "metric": "exact_match"}}
    lines = summary_of(make_job(tmp_path, datasets=[group]), cfg, capsys)
    assert ["mmlu_pro", "exact_match", "0.4000", "±", "0.0200", "100"] in rows_of(lines, "mmlu_pro")


def test_an_unwritable_folder_still_prints_the_scores(tmp_path, capsys):
    (tmp_path / "run").write_text("a file where the folder should be")
    lines = summary_of(make_job(tmp_path), make_cfg(), capsys)
    assert len(rows_of(lines, "spatial_reasoning")) == 1
    assert re.search(r"summary\.md could not be written", lines[-1])


@pytest.mark.parametrize("value", ["long", "SHORT"])
def test_a_bad_summary_value_is_refused(compose_cfg, value):
    from runner.config.schema import ConfigError, validate

    with pytest.raises(ConfigError, match=r"summary='.*' is not one of short, full"):
        validate(compose_cfg(f"summary={value}"))


def test_a_clustered_dataset_shows_its_cluster_robust_stderr_and_a_missing_one_says_why(tmp_path, capsys):
    job = make_job(tmp_path)
    clustered, alone = job.datasets[3], job.datasets[4]  # location_ner: clustered; ner_locations: no stderr
    clustered.metrics[clustered.name] |= {"f1_stderr_clustered": 0.0321, "f1_clusters": 28.0}
    del alone.metrics[alone.name]["f1_stderr"]
    lines = summary_of(job, make_cfg(), capsys)
    assert rows_of(lines, "location_ner") == [
        ["location_ner", "f1", "0.1000", "±", "0.0321", "(28", "clusters)", "100"]
    ]
    assert rows_of(lines, "ner_locations")[0][2:5] == ["0.1000", "(no", "stderr:"]
    text = (job.out_dir / SUMMARY_FILE).read_text()
    assert "| location_ner | f1 | 0.1000 | 0.0100 | 0.0321 | 100 |" in text  # both, side by side
    assert "| location_ner | f1_clusters |" not in text  # the count shows beside the stderr, not as a metric
    clustered.metrics[clustered.name] |= {"f1": 0.0, "f1_stderr_clustered": 0.0}  # every doc wrong
    lines = summary_of(job, make_cfg(), capsys)
    assert "0.0000 (± 0: every doc scored the same" in " ".join(rows_of(lines, "location_ner")[0])
