"""MLflow: one experiment per category, one run per job. The only module that talks to MLflow."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.config import flatten

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # characters MLflow accepts in metric and param names


def metric_name(*parts: str) -> str:
    """MLflow rejects commas, '@' and most punctuation in names ('acc,none', 'pass@1'); replace them."""
    return "/".join(_UNSAFE.sub("_", p.replace("@", "_at_")) for p in parts if p)


@contextmanager
def mlflow_run(cfg: Any, tags: dict[str, str]) -> Iterator[Any]:
    """Start the job's run; an exception ends it FAILED (Ctrl-C: KILLED), never leaving it RUNNING."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    experiment_id = _experiment(mlflow, cfg.tracking.experiment, cfg.tracking.artifact_root)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg.tracking.run_name, tags=tags)
    try:
        params = {metric_name(k): _param_value(v) for k, v in flatten(cfg).items()}
        mlflow.log_params(params)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def _experiment(mlflow, name: str, artifact_root: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (Path(artifact_root) / name).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."  # MLflow's param value limit


def log_metrics(metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
