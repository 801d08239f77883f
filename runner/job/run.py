"""One job, start to finish, in three stages: prepare -> execute -> record.

- prepare (runner/job/prepare.py): hardware, engine choice, weights, datasets, sandbox policy -> `JobPlan`;
- execute (runner/job/execute.py): the engine, the requests, the answers and scores -> `Execution`;
- record (runner/job/record.py): the run folder, MLflow and the summary -> `JobResult`.

The job's MLflow run spans all three: whatever fails ends it FAILED (Ctrl-C or a signal: KILLED) with the
error attached, and what was logged before stays. docs/architecture.md draws the whole flow.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runner.job.execute import execute
from runner.job.prepare import prepare
from runner.job.record import record, record_dataset
from runner.machine import gc_freeze
from runner.machine.library_env import prepare_environment
from runner.machine.peak_memory import PeakGPUMemory, PeakRSS
from runner.reporting.summary import print_summary
from runner.tracking import mlflow_run

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from runner.config.schema import RunnerConfig
    from runner.job.results import JobResult


def run_job(cfg: RunnerConfig, out_dir: Path, composed: DictConfig) -> JobResult:
    """`cfg`: the typed config (runner/cli.py `typed`); `composed`: the same as Hydra composed it, which also
    holds the keys the schema does not type (`+engine.<name>=...` for an engine of your own): the engine,
    its identity in the response cache and config_resolved.yaml get those."""
    started = time.perf_counter()
    prepare_environment(cfg.paths.cache_dir)
    gc_freeze.import_frozen("lm_eval.evaluator", "mlflow", "transformers")  # what every job uses (~2 s here)
    with mlflow_run.Tracker(cfg, out_dir, _tags(cfg, out_dir)) as tracker, PeakRSS() as rss, PeakGPUMemory() as gpu:
        job = prepare(cfg, out_dir, tracker)
        done = execute(
            cfg,
            job,
            out_dir,
            on_dataset=lambda result: record_dataset(tracker, result),
            on_tick=tracker.log_progress,
            fail_now=tracker.fail_now,
        )
        peaks = {
            "wall_s": time.perf_counter() - started,
            "peak_rss_gib": rss.peak_bytes / 1024**3,
            **({"peak_gpu_memory_gib": gpu.peak_bytes / 1024**3} if gpu.available else {}),
        }
        result = record(cfg, composed, job, done, out_dir, tracker, peaks)
    print_summary(result, cfg)
    return result


def _tags(cfg: RunnerConfig, out_dir: Path) -> dict[str, str]:
    return {
        "model": cfg.model.name,
        "category": cfg.category.name,
        "output_dir": str(out_dir),
        "model_in_category": str(cfg.model.name in cfg.category.models).lower(),
        "response_cache": str(cfg.cache).lower(),
        **_sweep_tags(),
    }


def _sweep_tags() -> dict[str, str]:
    """Where a sweep's job ran: its sweep folder and job number (and host, for launchers that spread jobs)."""
    from hydra.core.hydra_config import HydraConfig

    from runner.job.execute import in_sweep

    tags = {"host": socket.gethostname()}
    if in_sweep():
        hydra_cfg = HydraConfig.get()
        tags |= {
            "sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()),
            "job_num": str(hydra_cfg.job.num),
            "launcher": str(hydra_cfg.runtime.choices.get("hydra/launcher", "basic")),
        }
    return tags
