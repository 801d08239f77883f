"""Run one dataset's lm-eval task(s) through the bridge and keep lm-eval's own outputs.

Results and per-sample records are written with lm-eval's `EvaluationTracker`, so the run folder
holds exactly what `lm_eval --output_path ... --log_samples` would write and lm-eval tooling reads it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import OmegaConf

from runner.config.resolvers import to_dict
from runner.config.schema import local_files, seeds
from runner.job.results import DatasetResult
from runner.job.samples import (
    clustered_stderrs,
    corpus_stderrs,
    count_requests,
    generate_keys,
    metric_counts,
    sample_table,
)

if TYPE_CHECKING:  # lm-eval is imported only once a job runs
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from adapters.lm_eval_model import EngineLM
    from runner.config.schema import DatasetConfig, RunnerConfig
    from runner.engines.job_engine import JobEngine

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset cannot be run as configured; the message names the dataset key and the fix."""


def samples_limit(run_limit: int | None, dataset: DatasetConfig) -> int | None:
    """The samples per task a dataset is scored on: the job's `limit` when given, else the dataset's own."""
    return run_limit if run_limit is not None else dataset.limit


def task_manager(tasks_dir: str, needed: list[str]) -> TaskManager:
    """lm-eval's task index over our tasks, plus lm-eval's ~15k builtin ones only when a dataset needs them.

    Indexing the builtin tasks costs ~5 s, so a job that runs only the project's own tasks skips it.
    """
    from lm_eval.tasks import TaskManager

    own = TaskManager(include_path=tasks_dir, include_defaults=False)
    if all(name in own.all_tasks for name in needed):
        return own
    return TaskManager(include_path=tasks_dir)


def task_specs(dataset: DatasetConfig, tasks: TaskManager, out_dir: Path) -> list[str]:
    """lm-eval task specs for a dataset: names, or, with `local`, a YAML that reruns the task on local files.

    lm-eval resolves an `include:` of the task's own YAML and then our dataset overrides, so prompts,
    filters and metrics stay exactly the builtin task's; only where the rows come from changes.
    """
    files = local_files(dataset.local)
    if not files:
        return list(dataset.tasks)
    specs = []
    for task in dataset.tasks:
        entry = tasks.task_index.get(task)
        if entry is None or entry.yaml_path is None:
            raise DataError(
                f"category.datasets.{dataset.name}.local is set, but lm-eval has no task YAML named {task!r} "
                "to run on those files."
            )
        path = local_task_yaml(task, entry.yaml_path, files, dataset.local.format, out_dir / "task_overrides")
        specs.append(str(path))
    return specs


def local_task_yaml(task: str, yaml_path: str | Path, files: dict[str, str], data_format: str, folder: Path) -> Path:
    """`folder/<task>.yaml`: lm-eval's task `task` (its YAML at `yaml_path`) on local files (split -> file),
    read with the `datasets` builder `data_format` (json, csv, parquet)."""
    override = {
        "include": str(yaml_path),
        "task": task,
        "dataset_path": data_format,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(Path(f).expanduser().resolve()) for split, f in files.items()}},
    }
    override |= _splits_not_given(yaml_path, files)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(override)))
    return path


def _splits_not_given(yaml_path: str | Path, files: dict[str, str]) -> dict[str, None]:
    """The task's split settings that name a split the local files lack, set to none: lm-eval's `arc_easy`
    reads its `train` split for few-shot examples even at 0-shot, and would fail on a `local.test` alone."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own loader: follows `include:`

    task = load_yaml(yaml_path, resolve_func=False)
    keys = ("training_split", "validation_split", "test_split", "fewshot_split")
    return {key: None for key in keys if task.get(key) is not None and task[key] not in files}


def check_local_files(dataset: DatasetConfig) -> None:
    """Read a dataset's local JSON Lines files before anything loads: a bad line is reported by file and line
    (the `datasets` JSON reader would fail later, inside lm-eval, with a byte offset in a pyarrow traceback).
    Files that are not there at all were already skipped by readiness (runner/catalog/readiness.py)."""
    for split, name in local_files(dataset.local).items():
        path = Path(name).expanduser()
        where = f"category.datasets.{dataset.name}.local.{split}={name}"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{where} cannot be read ({exc.strerror}); check the path and its permissions.") from exc
        if dataset.local.format != "json":
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = raw[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{path}, line {at}: not UTF-8 (byte 0x{raw[exc.start]:02x}); lm-eval reads JSON as UTF-8. "
                "Convert the file, e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`."
            ) from exc
        array = text.lstrip().startswith("[")  # one JSON array of objects rather than JSON Lines
        lines = [(1, text)] if array else [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not lines:
            raise DataError(f"{where} is empty: no samples to evaluate.")
        for number, line in lines:
            try:
                rows = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {number + exc.lineno - 1}: not valid JSON ({exc.msg}, column {exc.colno}). "
                    "Each line of a JSON Lines file is one JSON object; fix or remove that line."
                ) from exc
            for row in rows if array and isinstance(rows, list) else [rows]:
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {number}: a JSON {type(row).__name__} where an object belongs.")
                _check_fields(dataset, path, number, row)


def _check_fields(dataset: DatasetConfig, path: Path, number: int, row: dict[str, Any]) -> None:
    """A row without a field the task reads would fail inside lm-eval's prompt template or the scorer, far
    from the file; `fields` in the dataset's conf names them."""
    missing = [name for name in dataset.fields or () if row.get(name) is None]
    if missing:
        raise DataError(
            f"{path}, line {number}: no {', '.join(repr(m) for m in missing)} field. Dataset {dataset.name} "
            f"({', '.join(dataset.tasks)}) reads {', '.join(dataset.fields)} from every row; this row has "
            f"{', '.join(row) or 'no fields'}. Add the field, or point category.datasets.{dataset.name}.local "
            "at a file in the dataset's own format."
        )


@contextmanager
def task_load_errors(dataset: DatasetConfig, tasks: TaskManager, tasks_dir: str) -> Iterator[None]:
    """While lm-eval builds the dataset's tasks (config and data) inside `simple_evaluate`, a failure
    becomes this dataset's DataError, with its name and the fix, not a traceback from inside lm-eval.
    Wraps the TaskManager's `load` rather than building the tasks twice."""
    original = tasks.load

    def load(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - YAML errors, unreachable hub, missing files: all one message
            raise _load_error(dataset, tasks_dir, exc) from exc

    tasks.load = load
    try:
        yield
    finally:
        del tasks.load  # the class's method again


def _load_error(dataset: DatasetConfig, tasks_dir: str, exc: Exception) -> DataError:
    first = (str(exc).strip().splitlines() or [""])[0][:500].rstrip(".")
    problem = _yaml_problem(tasks_dir, list(dataset.tasks)) or f"{type(exc).__name__}: {first}"
    if "ConnectionError" in type(exc).__name__ or "reach" in first:
        fix = (
            "Without network, set HF_DATASETS_OFFLINE=1 (the dataset is then skipped) or point "
            f"category.datasets.{dataset.name}.local.test at a local file."
        )
    else:
        fix = f"Check the task's YAML (lm-eval task format) under {tasks_dir} or lm-eval's own tasks."
    return DataError(
        f"Dataset {dataset.name}: lm-eval could not load task(s) {', '.join(dataset.tasks)}: {problem}. {fix}"
    )


def _yaml_problem(tasks_dir: str, names: list[str]) -> str | None:
    """lm-eval's task index skips a YAML file it cannot parse, and then only says the task is unknown."""
    import yaml

    for path in sorted(Path(tasks_dir).glob("**/*.yaml")):
        if path.stem not in names:
            continue
        try:
            yaml.compose(path.read_text())  # syntax only: lm-eval's !function tags need its own loader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}" if mark else str(path)
            return f"{where}: {getattr(exc, 'problem', None) or exc}"
    return None


# What lm-eval's add_env_info puts in every results file.
ENV_INFO_KEYS = ("pretty_env_info", "transformers_version", "lm_eval_version", "upper_git_hash")


def environment_key() -> str:
    """This host, its GPU driver, Python, every installed distribution (name and version) and the working
    directory: what lm-eval's environment report is made of. Any change gives another key."""
    import hashlib
    import site
    import socket
    import sys

    parts = [socket.gethostname(), sys.version, sys.prefix, os.getcwd()]
    driver = Path("/proc/driver/nvidia/version")
    parts.append(driver.read_text() if driver.is_file() else "no nvidia driver")
    for folder in site.getsitepackages():
        if Path(folder).is_dir():
            parts += sorted(name for name in os.listdir(folder) if name.endswith(".dist-info"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def reuse_env_info(cache_dir: str) -> None:
    """lm-eval adds torch's environment report to every results file. Building it imports torch and runs
    `pip list` and friends (~1.5 s here): on a job answered from the response cache, nothing else imports
    torch, and that was a fifth of the rerun. The report is kept under paths.cache_dir/env_info, keyed on
    everything it describes (`environment_key`), and rebuilt by lm-eval's own code whenever that changes."""
    import lm_eval.evaluator as evaluator

    if getattr(evaluator.add_env_info, "reuses_report", False):
        return
    original = evaluator.add_env_info
    stored = Path(cache_dir) / "env_info" / f"{environment_key()}.json"

    def add_env_info(storage: dict[str, Any]) -> None:
        if stored.is_file():
            storage.update(json.loads(stored.read_text()))
            return
        original(storage)
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({key: storage.get(key) for key in ENV_INFO_KEYS}))
        tmp.replace(stored)  # atomic: parallel jobs of a sweep may write it at once

    add_env_info.reuses_report = True  # type: ignore[attr-defined]
    evaluator.add_env_info = add_env_info


def evaluate_dataset(
    lm: EngineLM,
    dataset: DatasetConfig,
    *,
    cfg: RunnerConfig,
    tasks: TaskManager,
    out_dir: Path,
    cache: str | None = None,
    model_args: dict[str, str] | None = None,
) -> DatasetResult:
    from lm_eval.loggers import EvaluationTracker

    reuse_env_info(cfg.paths.cache_dir)
    tracker = EvaluationTracker(output_path=str(out_dir / "lm_eval"))
    served_before = lm.served
    start = time.perf_counter()
    results = _simple_evaluate(lm, dataset, cfg, tasks, out_dir, cache, model_args, tracker)
    wall = time.perf_counter() - start
    return _dataset_result(dataset, results, tracker, lm.failed, wall, lm.served - served_before)


def _simple_evaluate(
    lm: EngineLM,
    dataset: DatasetConfig,
    cfg: RunnerConfig,
    tasks: TaskManager,
    out_dir: Path,
    cache: str | None,
    model_args: dict[str, str] | None,
    tracker: EvaluationTracker,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` of one dataset, set as `lm_eval --seed ... --limit ...` would set it."""
    from lm_eval import simple_evaluate

    limit = samples_limit(cfg.limit, dataset)  # as the plan counts them (runner/job/plan.py)
    gen_kwargs = to_dict(dataset.gen_kwargs) or None
    # Code-executing tasks need the opt-in; a dataset marked unsafe_code opts in unless the user says no.
    allow_code = cfg.allow_code_execution if cfg.allow_code_execution is not None else bool(dataset.unsafe_code)
    random_seed, numpy_seed, _, fewshot_seed = seeds(cfg.seed)
    # A copy of its own: the job's datasets run side by side and each wraps the TaskManager's `load`.
    tasks = copy.copy(tasks)
    with task_load_errors(dataset, tasks, cfg.paths.tasks_dir):
        results = simple_evaluate(
            model=lm,
            # Only names the model in lm-eval's results file: the weights loaded (runner/catalog/provenance.py).
            model_args=model_args or {"pretrained": cfg.model.repo_id},
            tasks=task_specs(dataset, tasks, out_dir),
            num_fewshot=dataset.num_fewshot,
            limit=limit,
            task_manager=tasks,
            apply_chat_template=bool(cfg.model.chat_template),
            gen_kwargs=gen_kwargs,
            log_samples=True,
            evaluation_tracker=tracker,
            # lm-eval's four seeds as `lm_eval --seed` sets them. The engines seed torch themselves (HF per
            # call, vLLM through its `seed`) with the third; lm-eval doing it too would import torch on a job
            # answered entirely from the response cache (~1.2 s of a rerun).
            random_seed=random_seed,
            numpy_random_seed=numpy_seed,
            torch_random_seed=None,
            fewshot_random_seed=fewshot_seed,
            confirm_run_unsafe_code=allow_code,
            # lm-eval's own SQLite response cache: results are written as they arrive, so a rerun (after a
            # crash, or of a finished job) sends the engine only what is missing.
            use_cache=cache,
        )
    return cast(dict[str, Any], results)


def _dataset_result(
    dataset: DatasetConfig,
    results: dict[str, Any],
    tracker: EvaluationTracker,
    lm_failed: dict[str, str],
    wall: float,
    served: int,
) -> DatasetResult:
    """lm-eval's results and samples saved as its CLI saves them, and reduced to what the runner keeps."""
    samples = results.pop("samples")
    # Before lm-eval's tracker rewrites the samples in place for its JSON files (arguments become dicts).
    failed = dict(lm_failed)  # requests of this dataset the engine rejected or failed: scored wrong
    tables = {
        task: sample_table(task_samples, dataset.metric, failed, dataset.cluster)
        for task, task_samples in samples.items()
    }
    metrics = {task: _metrics(values) for task, values in results["results"].items()}
    for task, task_samples in samples.items():  # error bars for corpus metrics (micro-F1), which lm-eval leaves out
        metrics[task] = metrics.get(task, {}) | corpus_stderrs(task_samples, metrics.get(task, {}))
        if dataset.cluster is not None:  # and cluster-robust ones where the docs are not independent
            metrics[task] |= _clustered_or_warn(dataset, task, task_samples, metrics[task])
    keys = generate_keys(samples, configs=results.get("configs", {}))
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])

    counts = {task: int(n["effective"]) for task, n in results.get("n-samples", {}).items()}
    requests = count_requests(samples)
    return DatasetResult(
        dataset.name,
        metrics,
        counts,
        wall,
        requests,
        served,
        score=headline(metrics, dataset),
        tables=tables,
        metric_samples={task: metric_counts(task_samples) for task, task_samples in samples.items()},
        versions={task: str(version) for task, version in results.get("versions", {}).items()},
        generate_keys=keys,
        failed=len(failed),
    )


def _clustered_or_warn(
    dataset: DatasetConfig, task: str, samples: list[dict[str, Any]], metrics: dict[str, float]
) -> dict[str, float]:
    assert dataset.cluster is not None
    clustered = clustered_stderrs(samples, metrics, dataset.cluster)
    if dataset.metric in metrics and f"{dataset.metric}_stderr_clustered" not in clustered and samples:
        fields = ", ".join(sorted(samples[0].get("doc") or {}))
        log.warning(
            "Dataset %s: category.datasets.%s.cluster=%s does not name a cluster for every doc of task %s (its first "
            "doc has: %s); its standard errors are not clustered. Name a field every doc has, or a Jinja expression "
            "over them ({{ a if a is defined else b }}).",
            dataset.name, dataset.name, dataset.cluster, task, fields,
        )  # fmt: skip
    return clustered


def run_datasets(
    datasets: list[DatasetConfig],
    shared: JobEngine,
    evaluate: Callable[[DatasetConfig], DatasetResult],
    *,
    on_result: Callable[[DatasetResult], None],
    on_error: Callable[[DatasetConfig, BaseException], None],
) -> None:
    """Evaluate every dataset in a thread of its own, their requests answered together by the job's one
    engine pass (`shared`, a runner/engines/job_engine.py JobEngine served by this, the main, thread).

    `on_result(result)` and `on_error(dataset, exc)` run in the main thread as datasets finish (between
    engine calls: MLflow's fluent API belongs to the main thread), and once more for whatever finished
    when the pass stops early (Ctrl-C, an engine failure), so computed scores are kept.
    """
    finished: queue.Queue[tuple[DatasetConfig, DatasetResult | None, BaseException | None]] = queue.Queue()

    def work(dataset: DatasetConfig) -> None:
        try:
            with shared.dataset():
                result = evaluate(dataset)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which decides
            finished.put((dataset, None, exc))
            return
        finished.put((dataset, result, None))

    def drain() -> None:
        while True:
            try:
                dataset, result, exc = finished.get_nowait()
            except queue.Empty:
                return
            if exc is not None:
                on_error(dataset, exc)
            elif result is not None:
                on_result(result)

    shared.expect(len(datasets))
    threads = [
        threading.Thread(target=work, args=(dataset,), name=f"dataset-{dataset.name}", daemon=True)
        for dataset in datasets
    ]
    for thread in threads:
        thread.start()
    try:
        shared.run(idle=drain)
        for thread in threads:
            thread.join()
    except BaseException:
        # The pass stopped (Ctrl-C, the engine failed): waiting datasets end at once with Cancelled; give
        # those already scoring a moment, so what they computed is logged rather than lost.
        deadline = time.monotonic() + 2.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    finally:
        drain()


def headline(metrics: dict[str, dict[str, float]], dataset: DatasetConfig) -> float | None:
    """The dataset's `metric` from its own entry (a group's aggregate), else from its first task."""
    for task in (dataset.name, *dataset.tasks):
        if dataset.metric in metrics.get(task, {}):
            return metrics[task][dataset.metric]
    log.warning(
        "Dataset %s: lm-eval reported no %r (it reported: %s); set category.datasets.%s.metric to one of them.",
        dataset.name,
        dataset.metric,
        ", ".join(sorted({m for values in metrics.values() for m in values})),
        dataset.name,
    )
    return None


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval keys look like 'acc,none' / 'acc_stderr,none'; keep numbers, drop the default filter name."""
    out = {}
    for key, value in values.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filter_name = key.split(",", 1)
        out[metric if filter_name == "none" else f"{metric}_{filter_name}"] = float(value)
    return out
