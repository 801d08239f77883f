"""What `python -m runner` does with a composed config: run a job, or list / plan / doctor.

Known problems (bad config, model not found, engine cannot fit) end with one paragraph naming the
problem and the fix, and exit code 2; HYDRA_FULL_ERROR=1 shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runner.catalog import check_category_models
from runner.schema import ConfigError, validate

log = logging.getLogger("runner")


def dispatch(cfg: Any, out_dir: Path, model_overridden: bool) -> Any:
    from runner.evaluate import DataError
    from runner.models import ModelNotFoundError
    from runner.selection import SelectionError

    try:
        validate(cfg)
        if cfg.mode == "list":
            return list_catalog(cfg)
        check_category_models(cfg.category)
        if cfg.mode == "plan":
            return plan(cfg, out_dir, model_overridden)
        if cfg.mode == "doctor":
            return doctor(cfg)
        from runner.app import run_job

        return run_job(cfg, out_dir)
    except (ConfigError, SelectionError, ModelNotFoundError, DataError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def list_catalog(cfg: Any) -> list[dict]:
    from runner.catalog import category_status, load_catalog, project_tasks, render_list

    categories, models = load_catalog()
    own = project_tasks(cfg.paths.tasks_dir)
    statuses = []
    for category in categories.values():
        check_category_models(category, models)
        statuses.append(category_status(category, models, cfg.paths.cache_dir, cfg.paths.tasks_dir, own))
    if cfg.output == "json":
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        print(render_list(statuses))
    return [s.as_dict() for s in statuses]


def plan(cfg: Any, out_dir: Path, model_overridden: bool) -> dict:
    from runner.catalog import load_model
    from runner.hardware import detect
    from runner.plan import build_plan, render_plan, write_plan

    # With model=... the plan covers that model; otherwise every model the category lists.
    models = [cfg.model] if model_overridden else [load_model(name) for name in cfg.category.models]
    result = build_plan(cfg, models, detect())
    path = write_plan(result, out_dir)
    if cfg.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(render_plan(result))
        print(f"plan written to {path}")
    return result


def doctor(cfg: Any) -> list[dict]:
    from runner.doctor import as_json, render, run_checks
    from runner.hardware import detect

    checks = run_checks(cfg, detect())
    print(json.dumps(as_json(checks), indent=2) if cfg.output == "json" else render(checks))
    return as_json(checks)
