"""What a planned job can tell apart: per dataset, the smallest difference between two models that its samples
can detect (`mode=plan`), from the per-doc spread of the last run of that dataset in the MLflow store, or from the
worst case when there is none. The formulas are in runner/reporting/stats.py; this module finds the spread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.reporting.stats import WORST_CASE_SD

if TYPE_CHECKING:
    from mlflow.entities import Run

logger = logging.getLogger(__name__)
_RUNS = 200  # the newest finished runs looked at for each dataset's last one


@dataclass(frozen=True)
class Spread:
    """The standard deviation of a dataset's per-doc scores, and where it comes from."""

    sd: float
    source: str  # "worst case", or the run it was measured on: "run 1a2b3c4d (smollm2_135m, n=50)"
    run_id: str | None = None


WORST_CASE = Spread(WORST_CASE_SD, "worst case")


def last_spreads(tracking_uri: str, experiment: str, metrics: dict[str, str]) -> dict[str, Spread]:
    """dataset -> the spread of its headline metric (`metrics`: dataset -> metric) in the newest finished run of
    `experiment` that logged it with its stderr and n: `stderr * sqrt(n)` (for a mean, the docs' standard
    deviation; for a corpus metric, that of its bootstrap). Datasets without such a run are left out; a store
    that is not there is not created, and one that cannot be read gives nothing (logged)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return {}
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return {}
        runs = client.search_runs(
            [found.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=_RUNS,
        )
    except Exception as exc:  # noqa: BLE001 - an unreadable store costs the measured spread, not the plan
        logger.warning("Could not read earlier runs from %s (%s): the plan assumes the worst case.", tracking_uri, exc)
        return {}
    spreads: dict[str, Spread] = {}
    for run in runs:
        for dataset, metric in metrics.items():
            if dataset not in spreads and (spread := _spread(run, dataset, metric)) is not None:
                spreads[dataset] = spread
    return spreads


def _spread(run: Run, dataset: str, metric: str) -> Spread | None:
    """The run's spread of `<dataset>/<metric>`: from its cluster-robust stderr where it has one (clustered docs
    tell apart less), else its stderr. None without one, or with a stderr of 0 (every doc scored the same: that
    says nothing of another model's docs)."""
    values = run.data.metrics
    n = values.get(f"{dataset}/{metric}_n")
    clustered = values.get(f"{dataset}/{metric}_stderr_clustered")
    is_clustered = clustered is not None and math.isfinite(clustered)
    stderr = clustered if is_clustered else values.get(f"{dataset}/{metric}_stderr")
    if stderr is None or not math.isfinite(stderr) or stderr <= 0 or n is None or n < 2:
        return None
    kind = ", clustered" if is_clustered else ""
    source = f"run {run.info.run_id[:8]} ({run.data.tags.get('model', '?')}, n={int(n)}{kind})"
    return Spread(stderr * math.sqrt(n), source, run.info.run_id)
