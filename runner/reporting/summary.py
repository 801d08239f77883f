"""The report printed at the end of a job, and `summary.md`, its full version, in the job's folder.

`summary=short` (the default) prints one row per dataset (its headline `metric`, ± stderr, n), the skipped
datasets and a few telemetry lines; `summary=full` prints every metric instead. `summary.md` always holds
every metric with the number of documents it was scored on (n), and the whole telemetry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runner.console.tables import format_table

if TYPE_CHECKING:
    from runner.config.schema import CategoryConfig, ModelConfig, RunnerConfig, TrackingConfig
    from runner.job.results import DatasetResult, JobResult

SUMMARY_FILE = "summary.md"


def _stderr(metrics: dict[str, float], name: str, kind: str = "_stderr") -> float | None:
    stderr = metrics.get(f"{name}{kind}")
    return stderr if stderr is not None and stderr == stderr else None  # NaN: lm-eval computed none


def _value(metrics: dict[str, float], name: str, n: int | str = "?") -> str:
    """`value ± stderr`: the cluster-robust one where the dataset names its clusters (with their number), else
    lm-eval's (or, for a corpus metric, the runner's bootstrap); without one, why not."""
    clustered = _stderr(metrics, name, "_stderr_clustered")
    if (clustered if clustered is not None else _stderr(metrics, name)) == 0 and metrics[name] in (0.0, 1.0):
        return f"{metrics[name]:.4f} (± 0: every doc scored the same)"
    if clustered is not None:
        return f"{metrics[name]:.4f} ± {clustered:.4f} ({int(metrics.get(f'{name}_clusters', 0))} clusters)"
    stderr = _stderr(metrics, name)
    if stderr is None:
        why = "one doc" if n == 1 else "none for this aggregation"
        return f"{metrics[name]:.4f} (no stderr: {why})"
    return _pm(metrics[name], stderr)


def _pm(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def _n(result: DatasetResult, task: str, metric: str) -> int | str:
    """The docs `metric` of `task` was scored on (a subgroup metric's own docs), else the task's samples;
    a group's own entry (mmlu_pro, bbh) counts the samples of all its tasks."""
    scored = result.metric_samples.get(task, {}).get(metric)
    if scored is not None:
        return scored
    if task in result.samples:
        return result.samples[task]
    if task == result.name and result.samples:
        return sum(result.samples.values())
    return "?"


def _label(result: DatasetResult, task: str) -> str:
    return result.name if task == result.name else f"{result.name}/{task}"


def metric_rows(job: JobResult) -> list[tuple[str, str, float, float | None, int | str]]:
    """Every metric of every dataset: (dataset[/task], metric, value, stderr or None, n)."""
    rows: list[tuple[str, str, float, float | None, int | str]] = []
    for result in job.datasets:
        for task, metrics in result.metrics.items():
            for name in sorted(m for m in metrics if "_stderr" not in m and not m.endswith("_clusters")):
                rows.append((_label(result, task), name, metrics[name], _stderr(metrics, name), _n(result, task, name)))
    return rows


def _headline_metric(result: DatasetResult, category: CategoryConfig) -> tuple[str | None, str | None]:
    """The dataset's configured `metric`, and the task entry that reported it (None: none did).

    Looked up as runner/job/evaluate.py's `headline` does: the dataset's own (group) entry, then its tasks."""
    # A job's result for a dataset its category does not list (a hand-built job) has no configured metric.
    dataset = category.datasets.get(result.name)
    if dataset is None:
        return None, None
    metric = str(dataset.metric)
    tasks = list(dataset.tasks)
    for task in (result.name, *tasks, *result.metrics):
        if metric in result.metrics.get(task, {}):
            return metric, task
    return metric, None


def dataset_line(result: DatasetResult, cfg: RunnerConfig) -> str:
    """The line a finished dataset leaves on the console, from the same pieces as its summary row:
    `spatial_reasoning: acc 0.0600 ± 0.0339 (n=50) · 50 requests, 12 from the cache · 21.4 s`."""
    metric, task = _headline_metric(result, cfg.category)
    if metric is not None and task is not None:
        n = _n(result, task, metric)
        score = f"{metric} {_value(result.metrics[task], metric, n)} (n={n})"
    else:
        score = "no score" if result.score is None else f"{metric or 'score'} {result.score:.4f}"
    cached = result.requests - result.served
    requests = f"{result.requests} requests" + (f", {cached} from the cache" if cached else "")
    requests += f", {result.failed} failed in the engine (scored wrong)" if result.failed else ""
    return f"{result.name}: {score} · {requests} · {result.wall_seconds:.1f} s"


def headline_rows(job: JobResult, category: CategoryConfig) -> list[list[str]]:
    """One row per dataset: dataset, headline metric, value ± stderr, n."""
    rows = []
    for result in job.datasets:
        metric, task = _headline_metric(result, category)
        if metric is not None and task is not None:
            metrics = result.metrics[task]
            n = _n(result, task, metric)
            rows.append([result.name, metric, _value(metrics, metric, n), str(n)])
        elif result.score is not None:  # no config entry to name it (a hand-built job): the score alone
            rows.append([result.name, metric or "score", f"{result.score:.4f}", "?"])
        else:  # what lm-eval did report is in summary.md (and runner.log names it)
            rows.append([result.name, metric or "-", "no score: not reported by lm-eval", "-"])
    return rows


def telemetry_lines(job: JobResult, tracking: TrackingConfig) -> list[str]:
    """Requests and cache, a truncation warning when prompts were cut, throughput, load/wall/memory, and where
    the run went (MLflow run, output folder): five lines, six with the warning."""
    t = job.telemetry
    lines = []
    cached = int(t.get("requests_from_cache", 0))
    engine_state = (
        "reused from the previous job"
        if t.get("engine_reused")
        else ("loaded" if t.get("engine_loaded", 1) else "not loaded: every answer came from the cache")
    )
    total = int(t.get("requests_total", t.get("requests", 0)))
    lines.append(f"requests: {total}, {cached} from the response cache · engine {engine_state}")
    if t.get("requests_truncated"):
        lines.append(
            f"warning: {int(t['requests_truncated'])} prompts were longer than the context window and lost their "
            "beginning (lm-eval's left truncation); raise model.max_model_len if the model allows it."
        )
    # Measured now when the engine served something; else, where the cache kept them, the measurements of the
    # engine passes that generated the cached answers (throughput_source=response_cache in MLflow).
    served = t.get("requests", 0)
    from_cache = not served and "cached_answers_with_telemetry" in t
    if (served or from_cache) and "output_tokens_per_s" in t:
        latency = (
            f" · latency p50 {t['latency_p50_s']:.2f} s, p95 {t['latency_p95_s']:.2f} s" if "latency_p50_s" in t else ""
        )
        label = (
            "throughput (from the response cache, measured when those answers were generated)"
            if from_cache
            else "throughput"
        )
        lines.append(
            f"{label}: {t['output_tokens_per_s']:.1f} output tok/s, {t['input_tokens_per_s']:.1f} input tok/s, "
            f"{t['requests_per_s']:.2f} req/s{latency}"
        )
    parts = []
    if "model_load_s" in t:
        parts.append(f"model load {t['model_load_s']:.1f} s")
    if "wall_s" in t:
        parts.append(f"wall {t['wall_s']:.1f} s")
    if "peak_rss_gib" in t:
        parts.append(f"peak RSS {t['peak_rss_gib']:.2f} GiB")
    if "peak_gpu_memory_gib" in t:
        parts.append(f"peak GPU memory {t['peak_gpu_memory_gib']:.2f} GiB")
    if "kv_cache_tokens" in t:
        parts.append(f"KV cache {t['kv_cache_tokens']:.0f} tokens")
    if parts:
        lines.append(" · ".join(parts))
    if job.synced:
        lines.append(f"MLflow run:  {job.run_id} (experiment '{tracking.experiment}', store {tracking.uri})")
    else:
        lines.append(
            f"MLflow run:  {job.run_id or 'not created'}: the store {tracking.uri} could not take everything; "
            f"the run is kept in {Path(job.out_dir) / 'tracking.json'}. Upload it with `python -m runner mode=sync`."
        )
    lines.append(f"output dir:  {job.out_dir}")
    return lines


def _title(job: JobResult, category: CategoryConfig, model: ModelConfig) -> str:
    engine = job.engine or job.selection.kind  # vllm_server (vLLM 0.32.0 at <url>), or cpu, vllm, hf
    return f"{category.label} · {model.name} · engine {engine}"


def _clustered_stderrs(job: JobResult) -> dict[tuple[str, str], float]:
    """(dataset[/task], metric) -> its cluster-robust stderr, as `metric_rows` labels them."""
    out = {}
    for result in job.datasets:
        for task, metrics in result.metrics.items():
            for name in metrics:
                stderr = _stderr(metrics, name, "_stderr_clustered")
                if stderr is not None:
                    out[(_label(result, task), name)] = stderr
    return out


def _md(cell: object) -> str:
    return str(cell).replace("|", "\\|")


def render_markdown(job: JobResult, cfg: RunnerConfig) -> str:
    """summary.md: the headline scores, every metric with its n, skipped datasets, and the whole telemetry."""
    out = [f"# {_title(job, cfg.category, cfg.model)}", ""]
    out += ["## Headline scores", "", "| dataset | metric | score | n |", "| --- | --- | ---: | ---: |"]
    out += [f"| {' | '.join(_md(c) for c in row)} |" for row in headline_rows(job, cfg.category)]
    out += ["", "## Every metric", ""]
    out += [
        "n is the number of documents a metric was scored on: a subgroup metric (acc_k1) counts its own "
        "documents only, so metrics of one task can have different n.",
        "",
        "± clustered: the cluster-robust standard error, where the dataset names the clusters its docs come in "
        "(`cluster:` in conf/dataset/).",
        "",
        "| dataset | metric | value | ± stderr | ± clustered | n |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    clustered = _clustered_stderrs(job)
    for label, name, value, stderr, n in metric_rows(job):
        err = f"{stderr:.4f}" if stderr is not None else ""
        by = clustered.get((label, name))
        out.append(f"| {_md(label)} | {_md(name)} | {value:.4f} | {err} | {'' if by is None else f'{by:.4f}'} | {n} |")
    if job.skipped:
        out += ["", "## Skipped datasets", ""]
        out += [f"- {_md(name)}: {_md(why)}" for name, why in job.skipped.items()]
    if job.warnings:
        out += ["", "## Warnings", ""]
        out += [f"- {_md(text)}" for text in job.warnings]
    out += ["", "## Run", ""]
    out += [f"- {line}" for line in telemetry_lines(job, cfg.tracking)]
    out += ["", "## Telemetry", "", "| measure | value |", "| --- | ---: |"]
    for key, value in sorted(job.telemetry.items()):
        out.append(f"| {_md(key)} | {value:.6g} |" if isinstance(value, (int, float)) else f"| {_md(key)} | {value} |")
    return "\n".join(out) + "\n"


def write_summary_file(job: JobResult, cfg: RunnerConfig) -> Path:
    """Write summary.md into the job's folder; returns its path."""
    path = Path(job.out_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(job, cfg), encoding="utf-8")
    return path


def print_summary(job: JobResult, cfg: RunnerConfig) -> None:
    """Write summary.md, then print the short (or, with summary=full, the full) report."""
    full = cfg.summary == "full"
    try:
        write_summary_file(job, cfg)
        where = "" if full else f" · every metric with its n: {SUMMARY_FILE}"
    except OSError as exc:  # a full or read-only disk must not hide the scores of a finished job
        where = f" · {SUMMARY_FILE} could not be written ({exc.strerror or exc})"
    print()
    print(_title(job, cfg.category, cfg.model))
    if full:
        rows = [[label, name, _pm(value, err), str(n)] for label, name, value, err, n in metric_rows(job)]
        print(format_table(["dataset", "metric", "value", "n"], rows))
    else:
        print(format_table(["dataset", "metric", "score", "n"], headline_rows(job, cfg.category)))
    for name, why in job.skipped.items():
        print(f"skipped {name}: {why}")
    for text in job.warnings:
        print(f"warning: {text}")
    print()
    lines = telemetry_lines(job, cfg.tracking)
    lines[-1] += where
    print("\n".join(lines))
