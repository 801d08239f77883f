"""One job, start to finish: config -> engine -> lm-eval -> MLflow -> summary.

Read this file top to bottom to follow a run; each step lives in a module named for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner import tracking
from runner.catalog import dataset_status, model_status, project_tasks
from runner.env import prepare_environment
from runner.evaluate import DataError, DatasetResult, evaluate_dataset, task_manager
from runner.hardware import detect
from runner.models import ModelNotFoundError, resolve_model
from runner.selection import Selection, select_engine
from runner.summary import print_summary
from runner.telemetry import PeakRSS

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    run_id: str
    experiment_id: str
    out_dir: Path
    selection: Selection
    datasets: list[DatasetResult]
    telemetry: dict[str, float]
    skipped: dict[str, str]  # dataset -> why it could not run here


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def check_model_present(cfg: Any) -> None:
    status = model_status(cfg.model, cfg.paths.cache_dir)
    # Online, a hub model that is not cached yet is simply downloaded by the engine.
    if not status.ok and (hub_offline() or cfg.model.get("path") or cfg.model.get("gguf")):
        raise ModelNotFoundError(f"Model '{cfg.model.name}' cannot be loaded: {status.detail}.")


def runnable_datasets(cfg: Any) -> tuple[list[Any], dict[str, str]]:
    """The category's datasets that can run here, and why the others cannot (they are skipped, not fatal)."""
    own = project_tasks(cfg.paths.tasks_dir)
    runnable, skipped = [], {}
    for name, dataset in cfg.category.datasets.items():
        status = dataset_status(dataset, own)
        downloadable = not hub_offline() and dataset.get("hf_dataset") and not dataset.unsafe_code
        if status.ok or downloadable:
            runnable.append(dataset)
        else:
            skipped[name] = status.detail
            log.warning("Skipping dataset %s: %s", name, status.detail)
    if not runnable:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise DataError(
            f"None of category '{cfg.category.name}''s datasets can run here ({reasons}). "
            "`python -m runner mode=list` shows what is ready."
        )
    return runnable, skipped


def run_job(cfg: Any, out_dir: Path) -> JobResult:
    started = time.perf_counter()
    prepare_environment(cfg.paths.cache_dir)
    hardware = detect()
    selection = select_engine(cfg.engine, cfg.model, hardware)
    log.info("Hardware: %s. Engine: %s (%s)", hardware.summary(), selection.kind, selection.reason)
    # Everything that can fail without loading anything fails here, before an MLflow run or an engine exists.
    check_model_present(cfg)
    model_source = resolve_model(cfg.model, cfg.paths.cache_dir)
    datasets, skipped = runnable_datasets(cfg)
    if cfg.model.name not in cfg.category.models:
        log.warning(
            "Model %s is not one of category %s's models (%s); running it as asked.",
            cfg.model.name,
            cfg.category.name,
            ", ".join(cfg.category.models),
        )

    tags = {
        "model": cfg.model.name,
        "category": cfg.category.name,
        "engine": selection.kind,
        "engine_reason": selection.reason,
        "hardware": hardware.summary(),
        "output_dir": str(out_dir),
        "model_in_category": str(cfg.model.name in cfg.category.models).lower(),
    }
    if skipped:
        tags["skipped_datasets"] = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    with tracking.mlflow_run(cfg, tags) as run, PeakRSS() as rss:
        from adapters.lm_eval_model import EngineLM
        from runner.engines import build_engine, vllm_engine_args

        tasks = task_manager(cfg.paths.tasks_dir, [t for ds in datasets for t in ds.tasks])
        engine = build_engine(selection, model_source, cfg.model, cfg.engine)
        try:
            lm = EngineLM(
                engine,
                max_length=vllm_engine_args(selection, cfg.model, cfg.engine)["max_model_len"],
                chat=bool(cfg.model.chat_template),
                seed=cfg.seed,
            )
            results = [evaluate_dataset(lm, ds, cfg=cfg, tasks=tasks, out_dir=out_dir) for ds in datasets]
        finally:
            engine.shutdown()

        telemetry = engine.stats.as_metrics() | {
            "wall_s": time.perf_counter() - started,
            "peak_rss_gib": rss.peak_bytes / 1024**3,
        }
        metrics = dict(telemetry)
        for result in results:
            metrics[tracking.metric_name(result.name, "wall_s")] = result.wall_seconds
            for task, values in result.metrics.items():
                task_part = "" if task == result.name else task
                for metric, value in values.items():
                    metrics[tracking.metric_name(result.name, task_part, metric)] = value
        tracking.log_metrics(metrics)

        (out_dir / "telemetry.json").write_text(json.dumps(telemetry, indent=2) + "\n")
        (out_dir / "hardware.json").write_text(
            json.dumps(hardware.as_dict() | {"engine": selection.as_dict()}, indent=2) + "\n"
        )
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name in ("telemetry.json", "hardware.json", "config_resolved.yaml", "runner.log"):
            tracking.log_artifact(out_dir / name)
        tracking.log_artifact(out_dir / ".hydra", "hydra")
        tracking.log_artifact(out_dir / "lm_eval", "lm_eval")

    job = JobResult(run.info.run_id, run.info.experiment_id, out_dir, selection, results, telemetry, skipped)
    print_summary(job, cfg)
    return job
