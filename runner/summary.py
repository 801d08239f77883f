"""The short report printed at the end of a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.app import JobResult


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _value(metrics: dict[str, float], name: str) -> str:
    value = metrics[name]
    stderr = metrics.get(f"{name}_stderr")
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None and stderr == stderr else "")


def print_summary(job: JobResult, cfg: Any) -> None:
    rows = []
    for result in job.datasets:
        for task, metrics in result.metrics.items():
            for name in sorted(m for m in metrics if not m.endswith("_stderr")):
                label = result.name if task == result.name else f"{result.name}/{task}"
                # n: the docs this metric was scored on (a subgroup metric's own docs), else the task's samples.
                n = result.metric_samples.get(task, {}).get(name, result.samples.get(task, "?"))
                rows.append([label, name, _value(metrics, name), str(n)])
    t = job.telemetry
    print()
    print(f"{cfg.category.get('label', cfg.category.name)} · {cfg.model.name} · engine {job.selection.kind}")
    print(format_table(["dataset", "metric", "value", "n"], rows))
    for name, why in job.skipped.items():
        print(f"skipped {name}: {why}")
    print()
    cached = int(t.get("requests_from_cache", 0))
    engine_state = (
        "reused from the previous job"
        if t.get("engine_reused")
        else ("loaded" if t.get("engine_loaded", 1) else "not loaded: every answer came from the cache")
    )
    total = int(t.get("requests_total", t["requests"]))
    print(f"requests: {total}, {cached} from the response cache · engine {engine_state}")
    if t.get("requests_truncated"):
        print(
            f"warning: {int(t['requests_truncated'])} prompts were longer than the context window and lost their "
            "beginning (lm-eval's left truncation); raise model.max_model_len if the model allows it."
        )
    # Measured now when the engine served something; else, where the cache kept them, the measurements of the
    # engine passes that generated the cached answers (throughput_source=response_cache in MLflow).
    from_cache = not t["requests"] and "cached_answers_with_telemetry" in t
    if t["requests"] or from_cache:
        latency = (
            f" · latency p50 {t['latency_p50_s']:.2f} s, p95 {t['latency_p95_s']:.2f} s" if "latency_p50_s" in t else ""
        )
        label = (
            "throughput (from the response cache, measured when those answers were generated)"
            if from_cache
            else "throughput"
        )
        print(
            f"{label}: {t['output_tokens_per_s']:.1f} output tok/s, {t['input_tokens_per_s']:.1f} input tok/s, "
            f"{t['requests_per_s']:.2f} req/s{latency}"
        )
    kv = f" · KV cache {t['kv_cache_tokens']:.0f} tokens" if "kv_cache_tokens" in t else ""
    print(f"model load {t['model_load_s']:.1f} s · wall {t['wall_s']:.1f} s · peak RSS {t['peak_rss_gib']:.2f} GiB{kv}")
    if job.synced:
        print(f"MLflow run:  {job.run_id} (experiment '{cfg.tracking.experiment}', store {cfg.tracking.uri})")
    else:
        print(
            f"MLflow run:  {job.run_id or 'not created'}: the store {cfg.tracking.uri} could not take everything; "
            f"the run is kept in {job.out_dir / 'tracking.json'}. Upload it with `python -m runner mode=sync`."
        )
    print(f"output dir:  {job.out_dir}")
