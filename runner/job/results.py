"""What a job produced: each dataset's scores and the job's whole outcome, as `run_job` returns them.

Plain records, apart from the code that fills them (runner/job/evaluate.py, runner/job/record.py), so the modules
that read them (runner/reporting/summary.py, runner/tracking/mlflow_run.py's metric names, tests) need not import
the job pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from runner.engines.selection import Selection


@dataclass
class DatasetResult:
    name: str
    # task -> {metric name (lm-eval's "acc,none" without the filter suffix when it is "none"): value}
    metrics: dict[str, dict[str, float]]
    samples: dict[str, int]  # task -> number of samples evaluated
    wall_seconds: float
    requests: int = 0  # lm-eval requests of this dataset (a multiple-choice doc makes one per choice)
    served: int = 0  # of those, answered by the engine; the rest came from the response cache
    score: float | None = None  # the dataset's headline metric (dataset.metric)
    tables: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # task -> per-sample columns
    # task -> metric (named as in `metrics`) -> the docs it was scored on: a subgroup metric (acc_k1) is
    # scored on its group's docs only, not on every sample of the task.
    metric_samples: dict[str, dict[str, int]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # task -> its lm-eval version (task YAML metadata)
    generate_keys: list[str] = field(default_factory=list)  # lm-eval's cache keys of its generation requests
    failed: int = 0  # of `served`, requests the engine rejected or failed (answered "", scored wrong)


@dataclass
class JobResult:
    run_id: str | None  # None: the tracking store was unreachable from the start (see mode=sync)
    synced: bool  # everything reached the tracking store
    out_dir: Path
    selection: Selection
    datasets: list[DatasetResult]
    telemetry: dict[str, float]
    skipped: dict[str, str]  # dataset -> why it could not run here
    warnings: list[str] = field(default_factory=list)  # what the user should know about how it ran
    # The engine by name where it is not one of the registry's (vllm_server, a user's own engine._target_), with
    # what runs behind it (Engine.describe); None: a built-in engine, named by selection.kind (cpu, vllm, hf).
    engine: str | None = None
