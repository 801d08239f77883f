"""Stage 1 of a job, prepare: everything decided before an engine exists, as one `JobPlan`.

Hardware and the engine selection (the same `plan_model` that `mode=plan` prints), the engine class, the
weights and their provenance, the datasets that can run here, the response cache and the sandbox policy.
What can fail without loading anything fails here. Each decision is tagged on the job's MLflow run as it
is made, so a job that stops here still says how far it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.catalog import hub, provenance
from runner.catalog.readiness import check_model_present, dataset_status, project_tasks, unsandboxed
from runner.catalog.weights import resolve_model
from runner.config.schema import local_files
from runner.engines.identity import response_cache_key
from runner.engines.load import engine_class
from runner.job.cache_health import check_response_cache
from runner.job.evaluate import DataError, check_local_files
from runner.job.plan import build_plan, plan_model, write_plan
from runner.job.sandbox_policy import SandboxPolicy, sandbox_policy
from runner.machine.nvidia_driver import require_compatible
from runner.machine.ray_cluster import job_hardware

if TYPE_CHECKING:
    from typing import Any

    from runner.config.schema import DatasetConfig, RunnerConfig
    from runner.engines.base import Engine
    from runner.engines.selection import Selection
    from runner.machine.hardware import Hardware
    from runner.tracking.mlflow_run import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """What a job will do, decided before any engine exists: the value stage 2 (execute) runs."""

    hardware: Hardware
    selection: Selection
    engine_class: type[Engine]
    plan: dict[str, Any]  # plan.json: what `mode=plan` prints for this model
    model_source: str  # the weights' local folder, or the hub id the engine downloads
    weights: provenance.Weights
    datasets: list[DatasetConfig]  # the ones this job runs, in the category's order
    skipped: dict[str, str]  # dataset -> why it cannot run here
    sandbox: SandboxPolicy  # code datasets refused (their failure) and the warnings of weak isolation
    cache: str | None  # the response cache's path; None with cache=false

    def samples(self, dataset: str) -> int | None:
        return next((d["samples"] for d in self.plan["datasets"] if d["name"] == dataset), None)


def prepare(cfg: RunnerConfig, out_dir: Path, tracker: Tracker) -> JobPlan:
    hardware, selection, runs, plan = _place(cfg, out_dir, tracker)
    check_model_present(cfg)
    model_source = resolve_model(cfg.model, cfg.paths.cache_dir)
    weights = provenance.describe(cfg.model, model_source, cfg.paths.cache_dir)
    tracker.set_tags(weights.tags())
    datasets, skipped = runnable_datasets(cfg)
    for dataset in datasets:
        check_local_files(dataset)
    cache = str(Path(cfg.paths.response_cache) / response_cache_key(cfg, selection)) if cfg.cache else None
    if cache:
        check_response_cache(cache)  # a damaged file is set aside and recomputed (runner/job/cache_health.py)
    sandbox = sandbox_policy(cfg, datasets)
    tracker.set_tags(sandbox.tags)
    if skipped:
        tracker.set_tags({"skipped_datasets": "; ".join(f"{name}: {why}" for name, why in skipped.items())})
    datasets = [d for d in datasets if d.name not in sandbox.refused]
    job = JobPlan(hardware, selection, runs, plan, model_source, weights, datasets, skipped, sandbox, cache)
    _announce(cfg, job)
    return job


def _place(
    cfg: RunnerConfig, out_dir: Path, tracker: Tracker
) -> tuple[Hardware, Selection, type[Engine], dict[str, Any]]:
    """Where the job runs and on which engine, from the plan `mode=plan` would print; plan.json is written."""
    hardware = job_hardware(cfg)  # this machine, or the Ray cluster named by ray.address / RAY_ADDRESS
    planned = plan_model(cfg, cfg.model, hardware)
    if planned.selection is None:
        assert planned.error is not None
        raise planned.error
    selection = planned.selection
    if selection.gpus and hardware.source in ("nvml", "torch"):
        require_compatible()  # a driver too old for the installed CUDA build stops here, not inside vLLM
    log.info("Hardware: %s. Engine: %s (%s)", hardware.summary(), selection.kind, selection.reason)
    for line in selection.busy:
        log.warning("Not using %s (other processes hold its memory)", line)
    for line in selection.warnings:
        log.warning("%s", line)
    runs = engine_class(selection, cfg.engine)  # a class that imports, and is an Engine, or one paragraph
    tracker.set_tags(
        {
            "engine": selection.kind,
            "engine_reason": selection.reason,
            "engine_class": f"{runs.__module__}.{runs.__qualname__}",
            "hardware": hardware.summary(),
            **({"placement": "; ".join(hardware.notes)} if hardware.source == "ray" else {}),
        }
    )
    plan = build_plan(cfg, [planned], hardware)
    tracker.log_artifact(write_plan(plan, out_dir))
    return hardware, selection, runs, plan


def _announce(cfg: RunnerConfig, job: JobPlan) -> None:
    log.info(
        "%s on %s: %s",
        cfg.model.name,
        cfg.category.name,
        ", ".join(f"{d.name} ({job.samples(d.name) or '?'} samples)" for d in job.datasets),
    )
    if cfg.model.name not in cfg.category.models:
        log.warning(
            "Model %s is not one of category %s's models (%s); running it as asked.",
            cfg.model.name,
            cfg.category.name,
            ", ".join(cfg.category.models),
        )


def runnable_datasets(cfg: RunnerConfig) -> tuple[list[DatasetConfig], dict[str, str]]:
    """The category's datasets that can run here, and why the others cannot (they are skipped, not fatal)."""
    own = project_tasks(cfg.paths.tasks_dir)
    runnable: list[DatasetConfig] = []
    skipped: dict[str, str] = {}
    for name, dataset in cfg.category.datasets.items():
        status = dataset_status(dataset, own)
        from_hub = bool(dataset.hf_dataset) and not local_files(dataset.local)
        # A cached hub dataset is read offline when the hub does not answer; one not cached is skipped.
        why = hub.blocked() if from_hub else None
        downloadable = from_hub and not unsandboxed(dataset, own)
        if status.ok or (downloadable and why is None):
            runnable.append(dataset)
        else:
            unreachable = downloadable and not hub.offline_by_setting()
            skipped[name] = f"{status.detail}; {why}" if unreachable else status.detail
            log.warning("Skipping dataset %s: %s", name, skipped[name])
    if not runnable:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise DataError(
            f"None of category '{cfg.category.name}''s datasets can run here ({reasons}). "
            "`python -m runner mode=list` shows what is ready."
        )
    return runnable, skipped
