"""`python -m runner [overrides]`: Hydra composes conf/config.yaml, then runner/cli.py acts on `mode`.

Kept tiny and import-light: torch, vLLM, lm-eval and MLflow load only once a job really runs.
"""

from __future__ import annotations

if __name__ == "__main__":  # not in the workers vLLM spawns, which import this module as __mp_main__
    from runner.machine.allocator import preload_tcmalloc

    preload_tcmalloc()  # on vLLM's CPU build: this command again, with tcmalloc preloaded (allocator.py)

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.config.resolvers import CONFIG_DIR  # registers the schema and ${project_root:} before Hydra composes


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> object:
    from runner.cli import dispatch
    from runner.console.handlers import route_library_logs, set_verbose

    hydra_cfg = HydraConfig.get()
    set_verbose(bool(cfg.verbose or hydra_cfg.verbose))
    route_library_logs()
    overridden = {o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task}
    return dispatch(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        overridden=overridden,
        in_sweep=hydra_cfg.mode == RunMode.MULTIRUN,
    )


if __name__ == "__main__":  # vLLM spawns workers that re-import this module
    from runner.machine import stopping

    stopping.install()  # SIGTERM and SIGHUP stop a job as Ctrl-C does
    try:
        main()
    except KeyboardInterrupt as stop:  # a sweep stopped (its job said so), or Hydra itself was interrupted
        stopping.stop_children()
        raise SystemExit(stopping.exit_code(stop)) from None
    finally:
        from runner.machine.gc_freeze import freeze_for_exit

        freeze_for_exit()
