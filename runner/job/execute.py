"""Stage 2 of a job, execute: the engine, every dataset's requests, the answers and the scores, as an `Execution`.

The datasets run side by side through lm-eval (runner/job/evaluate.py), their requests answered together by
one engine pass (runner/engines/job_engine.py). A dataset's scores reach the run (`on_dataset`) as soon as
it finishes, so a later failure keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.config.schema import seeds
from runner.console.handlers import route_engine_logs
from runner.console.progress import JobProgress
from runner.engines import pool
from runner.engines.build import build_engine
from runner.engines.identity import pool_key
from runner.engines.job_engine import Cancelled, JobEngine
from runner.engines.lazy import LazyEngine
from runner.engines.load import is_placement_engine
from runner.engines.vllm_args import max_length
from runner.job.cached_telemetry import CachedTelemetry
from runner.job.evaluate import DataError, evaluate_dataset, run_datasets, task_manager
from runner.job.watchdog import Watchdog
from runner.machine import gc_freeze
from runner.reporting.summary import dataset_line

if TYPE_CHECKING:  # lm-eval is imported only once a job runs
    from lm_eval.tasks import TaskManager

    from adapters.lm_eval_model import EngineLM
    from runner.config.schema import DatasetConfig, RunnerConfig
    from runner.engines.base import Engine
    from runner.job.prepare import JobPlan
    from runner.job.results import DatasetResult

log = logging.getLogger(__name__)

PassHook = Callable[[str, bool], None]  # (request kind, started?) around each call of the engine pass


@dataclass
class Execution:
    results: list[DatasetResult]  # in the category's order
    failed: dict[str, str]  # dataset -> why it failed (its data or task, or the sandbox refused it)
    measured: dict[str, float]  # the engine's telemetry (tokens/s, latency, KV cache, load time, ...)
    counts: dict[str, float]  # the engine's load and reuse, and the job's requests: answered, cached, truncated
    throughput_source: str  # engine | mixed | response_cache | none: where the throughput numbers come from
    engine_name: str | None  # an engine that is no placement's (a server, a user's own), with its build
    bridges: list[EngineLM] = field(default_factory=list)  # one lm-eval model per dataset


@dataclass
class _Pass:
    """What the datasets' threads share while the engine pass runs."""

    cfg: RunnerConfig
    job: JobPlan
    out_dir: Path
    shared: JobEngine
    progress: JobProgress
    telemetry: CachedTelemetry | None
    model_args: dict[str, str]
    tasks: TaskManager  # lm-eval's index of the job's tasks
    bridges: list[EngineLM] = field(default_factory=list)

    def evaluate(self, dataset: DatasetConfig) -> DatasetResult:  # in the dataset's own thread
        from adapters.lm_eval_model import EngineLM

        cfg = self.cfg
        with self.progress.dataset(dataset.name) as row:
            lm = EngineLM(
                self.shared,
                max_length=max_length(self.job.selection, cfg.model, cfg.engine),
                chat=bool(cfg.model.chat_template),
                seed=seeds(cfg.seed)[2],  # the torch seed of lm-eval's four, as the engines get it
                telemetry=self.telemetry,
                progress=row,
            )
            self.bridges.append(lm)
            result = evaluate_dataset(
                lm, dataset, cfg=cfg, tasks=self.tasks, out_dir=self.out_dir, cache=self.job.cache,
                model_args=self.model_args,
            )  # fmt: skip
        log.info("%s", dataset_line(result, cfg))
        return result


def execute(
    cfg: RunnerConfig,
    job: JobPlan,
    out_dir: Path,
    *,
    on_dataset: Callable[[DatasetResult], None],
    on_tick: Callable[[int, float], None],
    fail_now: Callable[[str], None],
) -> Execution:
    tasks = task_manager(cfg.paths.tasks_dir, [t for ds in job.datasets for t in ds.tasks])
    progress = JobProgress(on_tick=on_tick)
    watchdog = Watchdog(lambda: progress.done, fail_now)
    engine, reused = _engine(cfg, job, progress, watchdog)
    progress.kv_cache_usage = engine.kv_cache_usage
    telemetry = CachedTelemetry(job.cache) if job.cache else None
    hooks = _watched_pass(_telemetry_pass(telemetry, engine), watchdog, float(cfg.engine.stall_timeout_s))
    shared = JobEngine(engine, on_pass=hooks)
    run = _Pass(cfg, job, out_dir, shared, progress, telemetry, job.weights.model_args(), tasks)
    results: list[DatasetResult] = []
    failed, crashed = dict(job.sandbox.refused), []

    def finished(result: DatasetResult) -> None:  # in the main thread, as each dataset finishes
        results.append(result)
        on_dataset(result)

    def broke(dataset: DatasetConfig, exc: BaseException) -> None:
        # A DataError is this dataset's data or task: the others still run, and the job fails at the end.
        if isinstance(exc, DataError):
            log.error("%s", exc)
            failed[dataset.name] = str(exc)
        elif not isinstance(exc, Cancelled):  # Cancelled: the engine pass stopped, and says why itself
            crashed.append(exc)

    try:
        run_datasets(job.datasets, shared, run.evaluate, on_result=finished, on_error=broke)
    finally:
        watchdog.stop()
        progress.close()
        if not in_sweep():  # a sweep's next job may reuse it (runner/engines/pool.py)
            engine.shutdown()
    if crashed:
        raise crashed[0]
    order = [d.name for d in job.datasets]
    results.sort(key=lambda r: order.index(r.name))  # the category's order, whichever finished first
    measured, source = _measured(results, engine, telemetry)
    counts = _counts(results, engine, reused, run.bridges)
    custom = not is_placement_engine(cfg.engine._target_)
    named = (engine.describe() if engine.loaded else job.engine_class.name) if custom else None
    return Execution(results, failed, measured, counts, source, named, run.bridges)


def _measured(
    results: list[DatasetResult], engine: LazyEngine, telemetry: CachedTelemetry | None
) -> tuple[dict[str, float], str]:
    """The engine's telemetry, and where its throughput comes from."""
    requests = sum(r.requests for r in results)
    served = sum(r.served for r in results)
    measured, source = engine.stats.as_metrics(), "engine" if served == requests else "mixed"
    if requests and not engine.stats.requests and telemetry is not None:
        # Every generation answer came from the cache: report the passes that generated them, marked so.
        stored = telemetry.metrics(key for r in results for key in r.generate_keys)
        measured, source = measured | stored, "response_cache" if stored else "none"
    if telemetry is not None:
        telemetry.close()
    return measured, source


def _counts(
    results: list[DatasetResult], engine: LazyEngine, reused: bool, bridges: list[EngineLM]
) -> dict[str, float]:
    requests = sum(r.requests for r in results)
    served = sum(r.served for r in results)
    return {
        "engine_loaded": float(engine.loaded),
        "engine_reused": float(reused),
        "requests_total": float(requests),
        "requests_from_cache": float(requests - served),
        # prompts cut from the left to fit the context window
        "requests_truncated": float(sum(lm.truncated for lm in bridges)),
    }


def in_sweep() -> bool:
    """Whether this job is one of a Hydra multirun (a sweep), whose later jobs may reuse its engine."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _engine(cfg: RunnerConfig, job: JobPlan, progress: JobProgress, watchdog: Watchdog) -> tuple[LazyEngine, bool]:
    """A lazily loaded engine; in a sequential sweep, the previous job's when its settings are the same."""

    def load() -> Engine:
        timeout = float(cfg.engine.load_timeout_s)
        with watchdog.watching("loading the engine", "engine.load_timeout_s", timeout):
            with progress.loading(f"{cfg.model.name} on {job.selection.kind}") as loading:
                gc_freeze.import_frozen("torch", "transformers")
                route_engine_logs()  # the engine imports torch and transformers now: their warnings go to runner.log
                built = build_engine(job.selection, job.model_source, cfg.model, cfg.engine)
                loading.model_s = built.stats.load_seconds  # the summary's `model load`, named in the `loaded` line
                return built

    def make() -> LazyEngine:
        return LazyEngine(load, job.model_source, trust_remote_code=bool(cfg.model.trust_remote_code))

    if not in_sweep():
        return make(), False
    return pool.acquire(pool_key(cfg, job.selection, job.model_source), make)


def _watched_pass(inner: PassHook | None, watchdog: Watchdog, stall_timeout_s: float) -> PassHook:
    """Each engine call of the job's pass is watched: no answer for stall_timeout_s ends the job."""

    def on_pass(kind: str, started: bool) -> None:
        if inner is not None:
            inner(kind, started)
        if started:
            watchdog.begin(f"in the engine's {kind} pass", "engine.stall_timeout_s", stall_timeout_s)
        else:
            watchdog.end()

    return on_pass


def _telemetry_pass(telemetry: CachedTelemetry | None, engine: LazyEngine) -> PassHook | None:
    """Bracket each generation call of the job's engine pass for the response cache's telemetry."""
    if telemetry is None:
        return None

    def on_pass(kind: str, started: bool) -> None:
        if kind != "generate":
            return
        if started:
            telemetry.start_pass(engine.stats)
        else:
            telemetry.end_pass(engine.name, engine.stats)

    return on_pass
