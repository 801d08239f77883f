"""Hydra's basic sweeper, plus: a job that does not name a model runs once per model its category lists,
and (`only_ready`, conf/experiment/ready.yaml) jobs this machine cannot run are left out, saying why.

`python -m runner -m category=coding,math` is then one job per (category, model), each category with
its own `models`; `model=a,b` on the command line wins, as any override does. Hydra's own
`hydra.sweeper.params` cannot do this: it is composed once, for the default category (hydra#3047).

It lives in `hydra_plugins` because Hydra only instantiates sweepers found there; conf/config.yaml
selects it (`override hydra/sweeper: runner`), and everything else is BasicSweeper's.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without registering them in
# sys.modules, and dataclasses then cannot resolve string annotations.
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from runner.config.schema import RunnerConfig

log = logging.getLogger(__name__)

# A job's overrides -> its composed config (the runner's schema, plus Hydra's own `hydra` node).
Compose = Callable[[list[str]], DictConfig]


def _choices(composed: DictConfig) -> dict[str, str | None]:
    """The config group options a composition chose: Hydra's own node (hydra.runtime.choices), as a plain dict."""
    return cast(dict[str, str | None], OmegaConf.to_container(composed.hydra.runtime.choices))


def _schema(composed: DictConfig) -> "RunnerConfig":
    """A composed config read through the runner's schema, which structures it (conf/config.yaml extends it)."""
    return cast("RunnerConfig", composed)


@dataclass
class RunnerSweeperConf:
    _target_: str = "hydra_plugins.runner_sweeper.RunnerSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    # override key -> where each job's own config lists its values, used when the key is not swept or set
    per_job: dict[str, str] = field(default_factory=lambda: {"model": "category.models"})
    # Leave out jobs that cannot run here (no dataset of the category ready, or the model's weights absent).
    only_ready: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="runner", node=RunnerSweeperConf, provider="runner")


class RunnerSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None,
        params: dict[str, str] | None = None,
        per_job: dict[str, str] | None = None,
        only_ready: bool = False,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.per_job = dict(per_job or {})
        self.only_ready = only_ready

    def _jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides: the cartesian product of the command line, then each `per_job` key not
        given there expanded from the job's own composed config."""
        assert self.hydra_context is not None and self.config is not None  # set by Hydra's setup()
        loader, config_name = self.hydra_context.config_loader, self.config.hydra.job.config_name
        parser = OverridesParser.create(config_loader=loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        given = {o.key_or_group for o in overrides}
        (jobs,) = self.split_arguments(overrides, None)

        def compose(job: list[str]) -> DictConfig:
            return loader.load_configuration(config_name=config_name, overrides=list(job), run_mode=RunMode.MULTIRUN)

        default_choices = _choices(compose([]))
        for key, path in self.per_job.items():
            if key in given:
                continue
            expanded: list[list[str]] = []
            for job in jobs:
                composed = compose(job)
                if _choices(composed).get(key) != default_choices.get(key):
                    expanded.append(job)  # a config of the job chose it (debug=fast picks its model): kept
                    continue
                values = OmegaConf.select(composed, path, default=None)
                if not values:
                    log.warning("No job for %s: its %s is empty", " ".join(job) or "the defaults", path)
                expanded += [[*job, f"{key}={value}"] for value in values or ()]
            jobs = expanded
        if not jobs:
            raise CompactHydraException(f"Nothing to sweep: {', '.join(self.per_job.values())} empty for every job.")
        if self.only_ready:
            jobs = self._ready(jobs, compose)
        return jobs

    @staticmethod
    def _ready(jobs: list[list[str]], compose: Compose) -> list[list[str]]:
        """The jobs whose category has a dataset ready here and whose model's weights are here, as
        `mode=list` judges them; what is left out is logged, grouped by reason."""
        from runner.catalog.readiness import dataset_status, load_model, model_status, project_tasks

        # One composition per job without its model (a category's jobs share it): composing each job
        # whole would cost half a second per (category, model).
        bases: dict[tuple[str, ...], RunnerConfig] = {}
        kept: list[list[str]] = []
        no_dataset: dict[str, bool] = {}  # an ordered set of category names
        no_weights: list[str] = []
        for job in jobs:
            base = tuple(o for o in job if not o.startswith("model="))
            if base not in bases:
                bases[base] = _schema(compose(list(base)))
            cfg = bases[base]
            tasks = project_tasks(cfg.paths.tasks_dir)
            if not any(dataset_status(d, tasks).ok for d in cfg.category.datasets.values()):
                no_dataset[cfg.category.name] = True
                continue
            name = next((o.split("=", 1)[1] for o in job if o.startswith("model=")), cfg.model.name)
            model = _schema(compose(job)).model if any(o.startswith("model.") for o in job) else load_model(name)
            if model_status(model, cfg.paths.cache_dir).ok:
                kept.append(job)
            else:
                no_weights.append(f"{cfg.category.name}/{name}")
        why = "`python -m runner mode=list category=<name>` says what is missing and how to get it"
        if no_dataset:
            log.warning("Left out, no dataset ready here: %s (%s)", ", ".join(no_dataset), why)
        if no_weights:
            log.warning("Left out, model weights not here: %s", ", ".join(no_weights))
        if not kept:
            raise CompactHydraException(f"Nothing this machine can run: every job was left out; {why}.")
        return kept

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        jobs = self._jobs(arguments)
        assert self.config is not None and self.launcher is not None  # set by Hydra's setup()
        size = self.max_batch_size or len(jobs)
        self.overrides = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        first = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            for result in results:
                _ = result.return_value  # re-raises a job's exception, as BasicSweeper does
            first += len(batch)
            returns.append(results)
        return returns
