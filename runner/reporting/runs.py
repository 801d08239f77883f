"""The evaluation runs a report compares, read from MLflow: one `RunRow` per run, from its metrics and tags.

`collect_runs` pages through MLflow's searches, skips the report's own runs (tagged `REPORT_TAG`) and keeps those
of one Hydra sweep when asked; runner/reporting/report.py draws and writes the report from the rows,
runner/reporting/compare.py tests the differences between them. mlflow is imported only when a store is read:
`import runner.reporting.report` stays light.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

REPORT_TAG = "runner.report"  # marks the report's own runs, so a report never lists an earlier report
SCORE_SUFFIX = "/score"  # `<dataset>/score`: the dataset's headline metric
_PAGE = 1000  # MLflow's largest page for run and experiment searches


@dataclass
class RunRow:
    """One evaluation run, reduced to what the report compares."""

    run_id: str
    experiment: str
    run_name: str
    model: str
    category: str
    engine: str
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    output_tokens_per_s: float | None = None  # None: not measured (every answer cached, no stored measurement)
    latency_p50_s: float | None = None
    peak_memory_gib: float | None = None  # GPU memory where measured, else the process's peak RSS
    wall_s: float | None = None
    start_time: datetime | None = None
    memory_kind: str = ""  # "GPU" or "RSS": which measurement peak_memory_gib is
    # "engine" (measured by this run), "response_cache" (measured when the cached answers were generated), "mixed",
    # or "" (unknown: no throughput recorded)
    throughput_source: str = ""
    task_versions: dict[str, str] = field(default_factory=dict)  # task -> lm-eval's version of it
    output_dir: str = ""  # the run folder, whose tables/ mirrors the per-sample tables

    @property
    def from_cache(self) -> bool:
        return self.throughput_source == "response_cache"

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


def collect_runs(
    tracking_uri: str, *, experiments: list[str] | None = None, sweep_dir: str | os.PathLike[str] | None = None
) -> list[RunRow]:
    """The evaluation runs of `experiments` (None: every experiment with runs but `Default`), oldest first.

    `sweep_dir` keeps only the runs whose `sweep_dir` tag names that folder. Report runs are skipped.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []  # no store yet (a sweep of plans): opening one would create it
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)  # explicit URI: the caller's global tracking URI stays untouched
    names = _experiment_names(client, experiments)
    if not names:
        return []
    wanted = None if sweep_dir is None else same_path(sweep_dir)
    rows = []
    for run in _all_pages(client.search_runs, list(names)):
        tags = run.data.tags
        if tags.get(REPORT_TAG) == "true":
            continue
        # Filtered here rather than in MLflow's filter string, which cannot quote every character a path may hold.
        if wanted is not None and ("sweep_dir" not in tags or same_path(tags["sweep_dir"]) != wanted):
            continue
        rows.append(_row(run, names[run.info.experiment_id]))
    rows.sort(key=lambda r: (r.experiment, r.start_time.timestamp() if r.start_time else 0.0, r.run_name))
    return rows


def _experiment_names(client: MlflowClient, experiments: list[str] | None) -> dict[str, str]:
    """experiment id -> name for the experiments asked for."""
    if experiments is not None:
        found = {}
        for name in experiments:
            experiment = client.get_experiment_by_name(name)
            if experiment is None or experiment.lifecycle_stage != "active":
                logger.warning("MLflow experiment %r does not exist; left out of the report.", name)
            else:
                found[experiment.experiment_id] = experiment.name
        return found
    return {e.experiment_id: e.name for e in _all_pages(client.search_experiments) if e.name != "Default"}


def _all_pages(search: Callable[..., Any], *args: object) -> list[Any]:
    """Every result of an MLflow search, page by page."""
    found, token = [], None
    while True:
        page = search(*args, max_results=_PAGE, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def same_path(path: str | os.PathLike[str]) -> str:
    """A sweep folder as its `sweep_dir` tag holds it (absolute): callers may pass it relative or with a trailing
    slash."""
    return os.path.abspath(os.fspath(path))


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _row(run: Run, experiment: str) -> RunRow:
    metrics, tags = run.data.metrics, run.data.tags
    scores = {
        name.removesuffix(SCORE_SUFFIX): float(value)
        for name, value in metrics.items()
        # One slash only: `<dataset>/<task>/score` would be a subtask's metric, not the dataset's headline.
        if name.endswith(SCORE_SUFFIX) and name.count("/") == 1 and math.isfinite(value)
    }
    gpu, rss = _finite(metrics.get("peak_gpu_memory_gib")), _finite(metrics.get("peak_rss_gib"))
    start = run.info.start_time
    tok_s = _finite(metrics.get("output_tokens_per_s"))
    source = tags.get("throughput_source") or ("engine" if tok_s is not None else "")
    return RunRow(
        run_id=run.info.run_id,
        experiment=experiment,
        run_name=run.info.run_name or tags.get("mlflow.runName") or run.info.run_id,
        model=tags.get("model", ""),
        category=tags.get("category", ""),
        engine=tags.get("engine", ""),
        status=run.info.status,
        scores=dict(sorted(scores.items())),
        output_tokens_per_s=tok_s,
        latency_p50_s=_finite(metrics.get("latency_p50_s")),
        peak_memory_gib=gpu if gpu is not None else rss,
        wall_s=_finite(metrics.get("wall_s")),
        start_time=datetime.fromtimestamp(start / 1000, tz=UTC) if start else None,
        memory_kind="GPU" if gpu is not None else ("RSS" if rss is not None else ""),
        throughput_source=source if tok_s is not None else "",
        task_versions={k.removeprefix("task_version."): v for k, v in tags.items() if k.startswith("task_version.")},
        output_dir=tags.get("output_dir", ""),
    )
