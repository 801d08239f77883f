"""lm-eval's logged samples (one record per doc and filter), reduced to what the runner keeps of them.

runner/job/evaluate.py reads each scored dataset's samples through these: the per-sample table MLflow shows
(`sample_table`), the docs each metric was scored on (`metric_counts`), the requests behind them
(`count_requests`) and the response-cache keys of those that generated text (`generate_keys`). They depend
only on the shape of lm-eval's sample records, not on running an evaluation.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

from runner.reporting.stats import (
    RESAMPLES,
    SEED,
    bootstrap_micro,
    clustered_stderr,
    micro_statistic,
    micro_value,
)


def count_requests(samples: dict[str, list[dict[str, Any]]]) -> int:
    """Requests sent for these samples. lm-eval logs one sample per doc *and filter* (gsm8k has two
    filters over the same answer), so each doc's requests count once, whatever the number of filters."""
    seen: set[tuple[str, Any]] = set()
    total = 0
    for task, task_samples in samples.items():
        for sample in task_samples:
            if (task, sample["doc_id"]) not in seen:
                seen.add((task, sample["doc_id"]))
                total += len(sample["arguments"])
    return total


def generate_keys(samples: dict[str, list[dict[str, Any]]], configs: dict[str, Any]) -> list[str]:
    """The response-cache keys (lm-eval's `hash_args`) of the generation requests behind these samples."""
    from lm_eval.api.model import hash_args

    keys = []
    for task, task_samples in samples.items():
        if configs.get(task, {}).get("output_type") != "generate_until":
            continue
        for sample in task_samples:
            keys += [hash_args("generate_until", args) for args in sample["arguments"]]
    return sorted(set(keys))  # a doc logged once per filter holds the same requests


def metric_counts(samples: list[dict[str, Any]]) -> dict[str, int]:
    """Metric name (as runner/job/evaluate.py's `_metrics` names it) -> how many docs reported it: what lm-eval
    aggregated it over."""
    counts: dict[str, int] = {}
    for sample in samples:
        filter_name = sample.get("filter", "none")
        for metric in sample.get("metrics", ()):
            name = metric if filter_name == "none" else f"{metric}_{filter_name}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def request_errors(sample: dict[str, Any], failed: dict[str, str]) -> str | None:
    """The error of the first of a sample's requests the engine failed (`failed`: lm-eval cache key -> error)."""
    from lm_eval.api.model import hash_args

    for args in sample.get("arguments") or ():
        for kind in ("generate_until", "loglikelihood"):
            error = failed.get(hash_args(kind, args))
            if error is not None:
                return error
    return None


def sample_table(
    samples: list[dict[str, Any]], metric: str, failed: dict[str, str] | None = None, cluster: str | None = None
) -> dict[str, list[Any]]:
    """lm-eval's logged samples as columns for MLflow's table view: prompt, response, target, score, parsed,
    and, when the engine failed some of their requests, the error of each (empty for the others).

    A corpus-level metric (micro-F1: each doc gives its true/false positives and false negatives, summed before
    the ratio) has no per-doc score; its table keeps the doc's counts instead, in `tp`, `fp`, `fn`, and names the
    statistic they make in `statistic` (runner/reporting/stats.py MICRO), so that intervals and paired tests can
    resample the docs (runner/reporting/compare.py). A dataset's `cluster` adds each doc's cluster (`cluster`) and
    what it is (`clustered_by`), for cluster-robust intervals and tests."""
    columns: dict[str, list[Any]] = {
        "doc_id": [],
        "prompt": [],
        "response": [],
        "target": [],
        "score": [],
        "parsed_ok": [],
    }
    if failed:
        columns["error"] = []
    for sample in samples:
        # lm-eval logs one entry per doc and filter; metric names carry the filter unless it is "none".
        key = _metric_key(sample, metric)
        if key is None:
            continue
        arguments = sample.get("arguments") or [[""]]
        responses = sample.get("filtered_resps") or [None]
        if len(arguments) > 1:  # multiple choice: the choice the model scored highest
            scores = [r[0] if isinstance(r, (list, tuple)) else r for r in responses]
            best = max(range(len(scores)), key=lambda i: scores[i]) if scores else 0
            response = arguments[best][1] if len(arguments[best]) > 1 else str(best)
        else:
            response = responses[0]
            response = response[0] if isinstance(response, list) and len(response) == 1 else response
        parsed = sample.get("parse_rate")  # the project's tasks score whether the answer could be parsed
        columns["doc_id"].append(sample.get("doc_id"))
        columns["prompt"].append(str(arguments[0][0]))
        columns["response"].append(str(response))
        columns["target"].append(str(sample.get("target")))
        columns["score"].append(float(sample[key]) if isinstance(sample[key], (int, float, bool)) else None)
        columns["parsed_ok"].append(None if parsed is None else bool(parsed))
        parts = counts(sample[key])
        if parts is not None and micro_statistic(metric) is not None:
            for name, value in zip(("tp", "fp", "fn"), parts, strict=True):
                columns.setdefault(name, []).append(value)
            columns.setdefault("statistic", []).append(micro_statistic(metric))
        if failed:
            columns["error"].append(request_errors(sample, failed) or "")
        if cluster is not None:
            columns.setdefault("cluster", []).append(cluster_of(sample.get("doc") or {}, cluster))
            columns.setdefault("clustered_by", []).append(cluster)
    if None in columns.get("cluster", ()):  # a doc without the field: no clusters rather than wrong ones
        del columns["cluster"], columns["clustered_by"]
    return columns


def counts(value: Any) -> tuple[float, float, float] | None:
    """A doc's (tp, fp, fn) counts for a corpus-level metric, or None when the value is not three counts."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1]), float(value[2])
    return None


def corpus_stderrs(samples: list[dict[str, Any]], metrics: dict[str, float]) -> dict[str, float]:
    """`<metric>_stderr` for the corpus-level metrics lm-eval gave none (its bootstrap covers only its own
    aggregations): the standard deviation of the metric over bootstrap resamples of the docs, recomputed from
    their summed (tp, fp, fn) counts. Only where the counts give back the value lm-eval reported, so the error
    bar is the reported number's."""
    out: dict[str, float] = {}
    for metric, value in metrics.items():
        statistic = micro_statistic(metric)
        if statistic is None or metric.endswith("_stderr") or math.isfinite(metrics.get(f"{metric}_stderr", math.nan)):
            continue
        values = [v for sample in samples if (v := _value(sample, metric)) is not None]
        parts = [p for v in values if (p := counts(v)) is not None]
        if not parts or len(parts) != len(values) or abs(micro_value(statistic, parts) - value) > 1e-9:
            continue
        if len(parts) < 2:
            continue  # one doc: no spread to resample (left out, not NaN: a NaN never equals itself)
        draws = bootstrap_micro([parts], [1.0], statistic, RESAMPLES, SEED)
        out[f"{metric}_stderr"] = float(draws.std(ddof=1))
    return out


def _metric_key(sample: dict[str, Any], metric: str) -> str | None:
    """The key of a metric in a sample, named as runner/job/evaluate.py names it: lm-eval logs one sample per doc
    and filter, and the metric's name carries the filter unless it is "none"."""
    filter_name = sample.get("filter", "none")
    return next((k for k in sample if k == metric and filter_name == "none" or f"{k}_{filter_name}" == metric), None)


def _value(sample: dict[str, Any], metric: str) -> Any:
    """A sample's value of a metric (`<metric>` or `<metric>_<filter>`), or None."""
    key = _metric_key(sample, metric)
    return None if key is None else sample[key]


def cluster_of(doc: dict[str, Any], cluster: str) -> str | None:
    """A doc's cluster under a dataset's `cluster`: a field (`template`; `gold.city` reaches into a nested one) or
    a Jinja expression over the doc's fields (`{{country}}/{{subtype}}`); None when the doc does not have it."""
    if "{{" in cluster:
        import jinja2

        try:
            return _template(cluster).render(**doc)
        except jinja2.TemplateError:
            return None
    value: Any = doc
    for part in cluster.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)


@functools.cache
def _template(expression: str) -> jinja2.Template:
    """A `cluster` expression compiled once, not once per doc."""
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(expression)


def clustered_stderrs(samples: list[dict[str, Any]], metrics: dict[str, float], cluster: str) -> dict[str, float]:
    """`<metric>_stderr_clustered` for each metric of these samples (lm-eval's mean of a per-doc number, or a
    corpus metric of (tp, fp, fn) counts) when every doc has a cluster under `cluster`, and `<metric>_clusters`,
    their number. A mean gets the cluster-robust formula (runner/reporting/stats.py `clustered_stderr`), a corpus
    metric the standard deviation of a cluster bootstrap. Only where the docs give back lm-eval's value."""
    out: dict[str, float] = {}
    for metric, value in metrics.items():
        if metric.endswith(("_stderr", "_stderr_clustered", "_clusters")):
            continue
        pairs = [
            (v, cluster_of(sample.get("doc") or {}, cluster))
            for sample in samples
            if (v := _value(sample, metric)) is not None
        ]
        groups = [c for _, c in pairs]
        if not pairs or None in groups:
            continue
        stderr = _clustered(metric, value, [v for v, _ in pairs], groups)
        if stderr is not None:
            out[f"{metric}_stderr_clustered"] = stderr
            out[f"{metric}_clusters"] = float(len(set(groups)))  # a subgroup metric's docs have fewer
    return out


def _clustered(metric: str, value: float, values: list[Any], groups: list[Any]) -> float | None:
    if len(set(groups)) < 2:
        return None  # one cluster: nothing to resample between
    statistic = micro_statistic(metric)
    parts = [p for v in values if (p := counts(v)) is not None]
    if statistic is not None and len(parts) == len(values):
        if abs(micro_value(statistic, parts) - value) > 1e-9:
            return None
        draws = bootstrap_micro([parts], [1.0], statistic, RESAMPLES, SEED, clusters=[groups])
        return float(draws.std(ddof=1))
    numbers = [float(v) for v in values if isinstance(v, (bool, int, float))]
    if len(numbers) != len(values) or abs(math.fsum(numbers) / len(numbers) - value) > 1e-9:
        return None
    return clustered_stderr(numbers, groups)
