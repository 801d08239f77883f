"""`mode=plan` and the first stage of every run: what a job would do (models, datasets, samples, engine, memory,
GPUs), decided without loading anything.

A run's prepare stage (runner/job/prepare.py) takes its engine selection and its plan.json from here, and
`mode=plan` prints the same value, so the two cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.catalog.readiness import dataset_size, dataset_status, model_status, project_tasks
from runner.console.tables import format_table
from runner.engines.selection import Selection, select_engine
from runner.job.evaluate import samples_limit
from runner.machine.hardware import SelectionError
from runner.reporting.power import WORST_CASE, Spread
from runner.reporting.stats import ALPHA, POWER, detectable_difference, samples_needed

if TYPE_CHECKING:
    from runner.config.schema import ModelConfig, RunnerConfig
    from runner.machine.hardware import Hardware


@dataclass(frozen=True)
class PlannedModel:
    """One model of a plan: its plan.json entry and the engine selection behind it (or why there is none)."""

    entry: dict[str, Any]
    selection: Selection | None
    error: SelectionError | None


def plan_model(cfg: RunnerConfig, model: ModelConfig, hardware: Hardware) -> PlannedModel:
    weights = model_status(model, cfg.paths.cache_dir)
    entry: dict[str, Any] = {
        "name": model.name,
        "repo_id": model.repo_id,
        "params_b": model.params_b,
        "dtype": model.dtype,
        "quantization": model.quantization,
        "in_category": model.name in cfg.category.models,
        "weights": {"ok": weights.ok, "detail": weights.detail},
    }
    try:
        selection = select_engine(cfg.engine, model, hardware)
    except SelectionError as exc:
        entry["engine"] = {"kind": None, "error": str(exc)}
        return PlannedModel(entry, None, exc)
    entry["engine"] = selection.as_dict()
    return PlannedModel(entry, selection, None)


def _detect(cfg: RunnerConfig, samples: int | None, spread: Spread) -> dict[str, Any] | None:
    """The smallest difference `samples` docs detect (80% power, two-sided 5%), and with `plan.detect` the docs
    that difference needs."""
    if not samples:
        return None
    entry: dict[str, Any] = {
        "difference": round(detectable_difference(spread.sd, samples), 4),
        "power": POWER,
        "alpha": ALPHA,
        "sd": round(spread.sd, 4),
        "from": spread.source,
    }
    if cfg.plan.detect is not None:
        entry["samples_for"] = {"difference": cfg.plan.detect, "samples": samples_needed(spread.sd, cfg.plan.detect)}
    return entry


def _planned_datasets(cfg: RunnerConfig, spreads: dict[str, Spread]) -> list[dict[str, Any]]:
    own = project_tasks(cfg.paths.tasks_dir)
    datasets = []
    for name, dataset in cfg.category.datasets.items():
        size = dataset_size(dataset, own)
        limit = samples_limit(cfg.limit, dataset)
        samples = size if limit is None else (limit if size is None else min(limit, size))
        status = dataset_status(dataset, own)
        datasets.append(
            {
                "name": name,
                "tasks": list(dataset.tasks),
                "num_fewshot": dataset.num_fewshot,
                "size": size,
                "samples": samples,
                "ready": status.ok,
                "detail": status.detail,
                "detect": _detect(cfg, samples, spreads.get(name, WORST_CASE)),
            }
        )
    return datasets


def build_plan(
    cfg: RunnerConfig, models: list[PlannedModel], hardware: Hardware, spreads: dict[str, Spread] | None = None
) -> dict[str, Any]:
    """`spreads`: the per-doc spread of datasets measured by earlier runs (runner/reporting/power.py); the others
    are planned for the worst case."""
    datasets = _planned_datasets(cfg, spreads or {})
    known = [d["samples"] for d in datasets if d["samples"] is not None]
    complete = len(known) == len(datasets)
    return {
        "category": cfg.category.name,
        "label": cfg.category.label,
        "hardware": hardware.as_dict() | {"summary": hardware.summary()},
        "models": [model.entry for model in models],
        "datasets": datasets,
        "samples_per_model": sum(known) if complete else None,
        "samples_total": sum(known) * len(models) if complete else None,
    }


def write_plan(plan: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "plan.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def _engine_cell(engine: dict[str, Any]) -> tuple[str, str]:
    if engine.get("kind") is None:
        return "ERROR", "-"
    parallel = ""
    if engine["kind"] == "distributed":
        parallel = f" tp={engine['tensor_parallel_size']} pp={engine['pipeline_parallel_size']}"
    mem = engine["memory"]
    if mem is None:  # a running server (engine.url): its memory is not this machine's
        return engine["kind"], "-"
    memory = f"{mem['weights_gib']} + {mem['kv_reserve_gib']} KV = {mem['total_gib']} GiB"
    return f"{engine['kind']}{parallel} ({engine['gpus']} GPU)", memory


def render_plan(plan: dict[str, Any]) -> str:
    lines = [f"Plan for {plan['label']} on {plan['hardware']['summary']}", ""]
    rows = []
    for m in plan["models"]:
        how, memory = _engine_cell(m["engine"])
        note = "" if m["in_category"] else " (not in category)"
        size = f"{m['params_b']}B {m['quantization'] or m['dtype']}"
        rows.append([m["name"] + note, size, how, memory, "yes" if m["weights"]["ok"] else "no"])
    lines.append(format_table(["model", "size", "engine", "memory (est.)", "weights here"], rows))
    busy: list[str] = []
    for m in plan["models"]:
        lines.append(f"  {m['name']}: {m['engine'].get('reason') or m['engine'].get('error')}")
        lines += [f"    warning: {line}" for line in m["engine"].get("warnings", ())]
        if m["engine"].get("devices"):
            lines.append(f"    on GPUs: {','.join(m['engine']['devices'])}")
        busy += [line for line in m["engine"].get("busy", ()) if line not in busy]
        if not m["weights"]["ok"]:
            lines.append(f"    weights: {m['weights']['detail']}")
    lines += [f"  not offered, in use: {line}" for line in busy]
    lines.append("")
    lines += _dataset_lines(plan["datasets"])
    per_model = plan["samples_per_model"]
    total = plan["samples_total"]
    lines.append("")
    lines.append(
        f"samples: {'?' if per_model is None else per_model} per model, {'?' if total is None else total} in all"
    )
    return "\n".join(lines)


def _detect_cells(d: dict[str, Any], wanted: float | None) -> list[str]:
    detect = d.get("detect")
    if detect is None:
        return ["?"] + (["?"] if wanted is not None else [])
    source = "worst case" if detect["from"] == "worst case" else detect["from"].split(" (")[0]
    # Past 1, no difference between two 0-1 scores is big enough: the samples cannot tell models apart.
    cells = [f"{detect['difference']:.3f} ({source})" if detect["difference"] < 1 else f"none: too few ({source})"]
    if wanted is not None:
        needed = detect["samples_for"]["samples"]
        over = d["size"] is not None and needed > d["size"]
        cells.append(f"{needed}" + (f" (only {d['size']} in the dataset)" if over else ""))
    return cells


def _dataset_lines(datasets: list[dict[str, Any]]) -> list[str]:
    """The datasets' table, what is not ready, and what the detectable difference means."""
    wanted = next(
        (d["detect"]["samples_for"]["difference"] for d in datasets if (d.get("detect") or {}).get("samples_for")), None
    )
    heads = ["dataset", "lm-eval tasks", "size", "samples", "ready", "detects"]
    heads += [f"samples to detect {wanted:g}"] if wanted is not None else []
    rows = []
    for d in datasets:
        size = "?" if d["size"] is None else str(d["size"])
        samples = "?" if d["samples"] is None else str(d["samples"])
        row = [d["name"], ",".join(d["tasks"]), size, samples, "yes" if d["ready"] else "no"]
        rows.append(row + _detect_cells(d, wanted))
    lines = [format_table(heads, rows)]
    lines += [f"  {d['name']}: {d['detail']}" for d in datasets if not d["ready"]]
    lines += [
        f"  {d['name']}: spread from {d['detect']['from']}"
        for d in datasets
        if (d.get("detect") or {}).get("from", "worst case") != "worst case"
    ]
    lines.append(
        f"  detects: the smallest difference between two models' scores these samples find {POWER:.0%} of the time\n"
        f"  (paired test, two-sided {ALPHA:.0%}; models taken as independent; per-doc spread from the dataset's last "
        "run in the store, else the worst case for 0-1 scores, sd 0.5)"
    )
    return lines
