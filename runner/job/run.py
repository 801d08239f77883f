"""One job, start to finish: config -> engine -> lm-eval -> MLflow -> summary.

Read this file top to bottom to follow a run; each step lives in a module named for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from runner.catalog import provenance
from runner.catalog.readiness import check_model_present, runnable_datasets
from runner.catalog.weights import resolve_model
from runner.config.schema import seeds
from runner.console.handlers import route_engine_logs
from runner.console.progress import JobProgress
from runner.console.summary import dataset_line, print_summary, write_summary_file
from runner.engines import pool
from runner.engines.build import build_engine
from runner.engines.identity import pool_key, response_cache_key
from runner.engines.job_engine import Cancelled, JobEngine, RequestsFailedError
from runner.engines.lazy import LazyEngine
from runner.engines.load import engine_class, is_placement_engine
from runner.engines.selection import Selection, select_engine
from runner.engines.vllm_args import max_length
from runner.job.cache_health import check_response_cache
from runner.job.cached_telemetry import CachedTelemetry
from runner.job.evaluate import DataError, check_local_files, evaluate_dataset, run_datasets, task_manager
from runner.job.plan import build_plan, write_plan
from runner.job.results import DatasetResult, JobResult
from runner.job.watchdog import Watchdog
from runner.machine import gc_freeze
from runner.machine.library_env import prepare_environment
from runner.machine.nvidia_driver import require_compatible
from runner.machine.peak_memory import PeakGPUMemory, PeakRSS
from runner.machine.ray_cluster import job_hardware
from runner.tracking import mlflow_run

if TYPE_CHECKING:  # lm-eval is imported only once a job runs
    from adapters.lm_eval_model import EngineLM

log = logging.getLogger(__name__)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _engine(
    cfg: Any, selection: Selection, model_source: str, progress: JobProgress, watchdog: Watchdog
) -> tuple[LazyEngine, bool]:
    """A lazily loaded engine; in a sequential sweep, the previous job's when its settings are the same."""

    def load():
        timeout = float(cfg.engine.load_timeout_s)
        with watchdog.watching("loading the engine", "engine.load_timeout_s", timeout):
            return _load()

    def _load():
        with progress.loading(f"{cfg.model.name} on {selection.kind}") as load:
            gc_freeze.import_frozen("torch", "transformers")
            route_engine_logs()  # the engine imports torch and transformers now: their warnings go to runner.log
            built = build_engine(selection, model_source, cfg.model, cfg.engine)
            load.model_s = built.stats.load_seconds  # the summary's `model load`: named in the `loaded` line too
            return built

    def make() -> LazyEngine:
        return LazyEngine(load, model_source, trust_remote_code=bool(cfg.model.trust_remote_code))

    if not _in_sweep():
        return make(), False
    return pool.acquire(pool_key(cfg, selection, model_source), make)


def _sweep_tags() -> dict[str, str]:
    """Where a sweep's job ran: its sweep folder and job number (and host, for launchers that spread jobs)."""
    import socket

    from hydra.core.hydra_config import HydraConfig

    tags = {"host": socket.gethostname()}
    if _in_sweep():
        hydra_cfg = HydraConfig.get()
        tags |= {
            "sweep_dir": str(Path(hydra_cfg.sweep.dir).resolve()),
            "job_num": str(hydra_cfg.job.num),
            "launcher": str(hydra_cfg.runtime.choices.get("hydra/launcher", "basic")),
        }
    return tags


def run_job(cfg: Any, out_dir: Path) -> JobResult:
    started = time.perf_counter()
    prepare_environment(cfg.paths.cache_dir)
    gc_freeze.import_frozen("lm_eval.evaluator", "mlflow", "transformers")  # what every job uses (~2 s here)
    tags = {
        "model": cfg.model.name,
        "category": cfg.category.name,
        "output_dir": str(out_dir),
        "model_in_category": str(cfg.model.name in cfg.category.models).lower(),
        "response_cache": str(cfg.cache).lower(),
        **_sweep_tags(),
    }
    # The run exists from here on: whatever fails below ends it FAILED with the error attached.
    with mlflow_run.Tracker(cfg, out_dir, tags) as tracker, PeakRSS() as rss, PeakGPUMemory() as gpu_memory:
        hardware = job_hardware(cfg)  # this machine, or the Ray cluster named by ray.address / RAY_ADDRESS
        selection = select_engine(cfg.engine, cfg.model, hardware)
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
        plan = build_plan(cfg, [cfg.model], hardware)
        tracker.log_artifact(write_plan(plan, out_dir))
        # What can fail without loading anything fails here, before an engine exists.
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
        refused, warnings = _sandbox_isolation(cfg, datasets, tracker)
        datasets = [d for d in datasets if d.name not in refused]
        if skipped:
            tracker.set_tags({"skipped_datasets": "; ".join(f"{name}: {why}" for name, why in skipped.items())})
        samples = {d["name"]: d["samples"] for d in plan["datasets"]}
        log.info(
            "%s on %s: %s",
            cfg.model.name,
            cfg.category.name,
            ", ".join(f"{d.name} ({samples.get(d.name) or '?'} samples)" for d in datasets),
        )
        if cfg.model.name not in cfg.category.models:
            log.warning(
                "Model %s is not one of category %s's models (%s); running it as asked.",
                cfg.model.name,
                cfg.category.name,
                ", ".join(cfg.category.models),
            )

        from adapters.lm_eval_model import EngineLM

        tasks = task_manager(cfg.paths.tasks_dir, [t for ds in datasets for t in ds.tasks])
        progress = JobProgress(on_tick=tracker.log_progress)
        watchdog = Watchdog(lambda: progress.done, tracker.fail_now)
        model_args = weights.model_args()  # names the weights in lm-eval's results
        engine, reused = _engine(cfg, selection, model_source, progress, watchdog)
        progress.kv_cache_usage = engine.kv_cache_usage
        cache_telemetry = CachedTelemetry(cache) if cache else None
        # Every dataset's requests go to the engine together, one call per request type (runner/engines/job_engine.py).
        stall = float(cfg.engine.stall_timeout_s)
        shared = JobEngine(engine, on_pass=_watched_pass(_telemetry_pass(cache_telemetry, engine), watchdog, stall))
        bridges: list[EngineLM] = []
        results, failed, crashed = [], dict(refused), []

        def evaluate(dataset) -> DatasetResult:  # in the dataset's own thread
            with progress.dataset(dataset.name) as row:
                lm = EngineLM(
                    shared,
                    max_length=max_length(selection, cfg.model, cfg.engine),
                    chat=bool(cfg.model.chat_template),
                    seed=seeds(cfg.seed)[2],  # the torch seed of lm-eval's four, as the engines get it
                    telemetry=cache_telemetry,
                    progress=row,
                )
                bridges.append(lm)
                result = evaluate_dataset(
                    lm, dataset, cfg=cfg, tasks=tasks, out_dir=out_dir, cache=cache, model_args=model_args
                )
            log.info("%s", dataset_line(result, cfg))
            return result

        def finished(result: DatasetResult) -> None:  # in the main thread, as each dataset finishes
            results.append(result)
            # Logged as each dataset finishes, so a later failure keeps the earlier scores in the run.
            tracker.log_metrics(mlflow_run.dataset_metrics(result))
            # Which version of each task scored it: runs of different data versions are not compared.
            tracker.set_tags({f"task_version.{task}": v for task, v in result.versions.items()})
            for task, table in result.tables.items():
                tracker.log_table(table, f"samples/{result.name}/{task}.json")

        def broke(dataset, exc: BaseException) -> None:
            # A DataError is this dataset's data or task: the others still run, and the job fails at the end.
            if isinstance(exc, DataError):
                log.error("%s", exc)
                failed[dataset.name] = str(exc)
            elif not isinstance(exc, Cancelled):  # Cancelled: the engine pass stopped, and says why itself
                crashed.append(exc)

        try:
            run_datasets(datasets, shared, evaluate, on_result=finished, on_error=broke)
        finally:
            watchdog.stop()
            progress.close()
            if not _in_sweep():  # a sweep's next job may reuse it (runner/engines/pool.py)
                engine.shutdown()
        if crashed:
            raise crashed[0]
        order = [d.name for d in datasets]
        results.sort(key=lambda r: order.index(r.name))  # the category's order, whichever finished first

        requests = sum(r.requests for r in results)
        served = sum(r.served for r in results)
        measured, source = engine.stats.as_metrics(), "engine" if served == requests else "mixed"
        if requests and not engine.stats.requests and cache_telemetry is not None:
            # Every generation answer came from the cache: report the passes that generated them, marked so.
            stored = cache_telemetry.metrics(key for r in results for key in r.generate_keys)
            measured, source = measured | stored, "response_cache" if stored else "none"
        if cache_telemetry is not None:
            cache_telemetry.close()
        tracker.set_tags({"throughput_source": source})
        telemetry = measured | {
            "wall_s": time.perf_counter() - started,
            "peak_rss_gib": rss.peak_bytes / 1024**3,
            **({"peak_gpu_memory_gib": gpu_memory.peak_bytes / 1024**3} if gpu_memory.available else {}),
            "engine_loaded": float(engine.loaded),
            "engine_reused": float(reused),
            "requests_total": float(requests),
            "requests_from_cache": float(requests - served),
            # prompts cut from the left to fit the context window
            "requests_truncated": float(sum(lm.truncated for lm in bridges)),
        }
        tracker.log_metrics({k: v for k, v in telemetry.items() if v == v})  # NaN: not measured (all cached)

        (out_dir / "telemetry.json").write_text(json.dumps(telemetry, indent=2) + "\n")
        (out_dir / "hardware.json").write_text(
            json.dumps(hardware.as_dict() | {"engine": selection.as_dict()}, indent=2) + "\n"
        )
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for name in ("telemetry.json", "hardware.json", "config_resolved.yaml", "runner.log"):
            tracker.log_artifact(out_dir / name)
        tracker.log_artifact(out_dir / ".hydra", "hydra")
        tracker.log_artifact(out_dir / "lm_eval", "lm_eval")

        # An engine that is no placement's (engine=vllm_server, a user's own) is named in the summary's header, with
        # its build; the built-in ones keep the kind selection picked (cpu, vllm, hf).
        custom = not is_placement_engine(cfg.engine.get("_target_"))
        named = (engine.describe() if engine.loaded else runs.name) if custom else None
        job = JobResult(
            tracker.run_id, tracker.record.synced, out_dir, selection, results, telemetry, skipped, warnings, named
        )
        tracker.log_artifact(write_summary_file(job, cfg))  # every metric with its n, beside the run's scores
        if failed:
            print_summary(job, cfg)
            tracker.set_tags({"failed_datasets": ", ".join(failed)})
            total = len(datasets) + len(refused)
            others = " and the others were scored and logged" if len(failed) < total else ""
            raise DataError(f"{len(failed)} of {total} datasets failed{others}. " + " ".join(failed.values()))
        _check_failed_requests(results, bridges, float(cfg.engine.max_failed_fraction), job, cfg, tracker)
    print_summary(job, cfg)
    return job


def _check_failed_requests(
    results: list[DatasetResult], bridges: list[EngineLM], limit: float, job: JobResult, cfg: Any, tracker: Any
) -> None:
    """One request the engine rejects is one wrong answer; more than `limit` of them fails the job (its
    scores stay logged: they are what the model did, with those requests counted wrong)."""
    failed, served = sum(r.failed for r in results), sum(r.served for r in results)
    if not served or failed / served <= limit:
        return
    print_summary(job, cfg)
    first = next((error for lm in bridges for error in lm.failed.values()), "")
    tracker.set_tags({"requests_failed": str(failed)})
    raise RequestsFailedError(
        f"{failed} of {served} requests failed in the engine ({failed / served:.1%}), more than "
        f"engine.max_failed_fraction={limit}; the first: {first}. Each was scored as a wrong answer and the scores "
        "are kept in the run (per-sample tables have the errors). Fix what the error names and rerun (answered "
        "requests come from the cache), or raise engine.max_failed_fraction to accept them."
    )


def _sandbox_isolation(cfg: Any, datasets: list[Any], tracker: Any) -> tuple[dict[str, str], list[str]]:
    """Code datasets run model-written code only with the sandbox's full isolation: checked here, before
    anything is generated. Returns the datasets refused (name -> why, one paragraph) and the warnings."""
    from adapters.sandbox import ALLOW_WEAK_ENV, missing_isolation, probe

    allow_weak = bool(cfg.sandbox.allow_weak_isolation)
    os.environ[ALLOW_WEAK_ENV] = "1" if allow_weak else "0"  # what the code tasks' scoring reads
    code = [d.name for d in datasets if d.unsafe_code and cfg.allow_code_execution is not False]
    if not code:
        return {}, []
    missing = missing_isolation(probe())
    tracker.set_tags({"sandbox_isolation": "weak: " + "; ".join(missing) if missing else "full"})
    if not missing:
        return {}, []
    if allow_weak:
        tracker.set_tags({"sandbox_allow_weak_isolation": "true"})
        warning = (
            f"model-written code ran with weak isolation (sandbox.allow_weak_isolation=true): {'; '.join(missing)}."
        )
        log.warning("%s", warning)
        return {}, [warning]
    why = (
        f"Dataset {{name}} runs model-written code, and the sandbox cannot fully isolate it on this machine: "
        f"{'; '.join(missing)}. Run the job as root (each program then gets its own unprivileged uid), or allow "
        "unprivileged user namespaces (sysctl user.max_user_namespaces>0, kernel.unprivileged_userns_clone=1, "
        "kernel.apparmor_restrict_unprivileged_userns=0); `python -m runner mode=doctor` shows what this machine "
        "allows. Or accept the risk with sandbox.allow_weak_isolation=true."
    )
    return {name: why.format(name=name) for name in code}, []


def _watched_pass(inner: Any, watchdog: Watchdog, stall_timeout_s: float):
    """Each engine call of the job's pass is watched: no answer for stall_timeout_s ends the job."""

    def on_pass(kind: str, started: bool) -> None:
        if inner is not None:
            inner(kind, started)
        if started:
            watchdog.begin(f"in the engine's {kind} pass", "engine.stall_timeout_s", stall_timeout_s)
        else:
            watchdog.end()

    return on_pass


def _telemetry_pass(telemetry: CachedTelemetry | None, engine: LazyEngine):
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
