"""Whether a job may run model-written code on this machine: decided once, before anything is generated.

Code datasets run model-written code only in adapters/sandbox/, and only with its full isolation, unless the
user accepts less (`sandbox.allow_weak_isolation=true`). The code tasks' scorer, which lm-eval runs in the
job's process, is told that choice by a call (`adapters.sandbox.set_weak_isolation`), not through an
environment variable every process the job starts would inherit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.config.schema import DatasetConfig, RunnerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxPolicy:
    refused: dict[str, str] = field(default_factory=dict)  # code dataset -> why it cannot run here (one paragraph)
    warnings: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # for the job's MLflow run


def sandbox_policy(cfg: RunnerConfig, datasets: list[DatasetConfig]) -> SandboxPolicy:
    from adapters.sandbox import missing_isolation, probe, set_weak_isolation

    allow_weak = bool(cfg.sandbox.allow_weak_isolation)
    set_weak_isolation(allow_weak)  # what the code tasks' scoring runs their programs with
    code = [d.name for d in datasets if d.unsafe_code and cfg.allow_code_execution is not False]
    if not code:
        return SandboxPolicy()
    missing = missing_isolation(probe())
    tags = {"sandbox_isolation": "weak: " + "; ".join(missing) if missing else "full"}
    if not missing:
        return SandboxPolicy(tags=tags)
    if allow_weak:
        warning = (
            f"model-written code ran with weak isolation (sandbox.allow_weak_isolation=true): {'; '.join(missing)}."
        )
        log.warning("%s", warning)
        return SandboxPolicy(warnings=[warning], tags=tags | {"sandbox_allow_weak_isolation": "true"})
    why = (
        f"Dataset {{name}} runs model-written code, and the sandbox cannot fully isolate it on this machine: "
        f"{'; '.join(missing)}. Run the job as root (each program then gets its own unprivileged uid), or allow "
        "unprivileged user namespaces (sysctl user.max_user_namespaces>0, kernel.unprivileged_userns_clone=1, "
        "kernel.apparmor_restrict_unprivileged_userns=0); `python -m runner mode=doctor` shows what this machine "
        "allows. Or accept the risk with sandbox.allow_weak_isolation=true."
    )
    return SandboxPolicy(refused={name: why.format(name=name) for name in code}, tags=tags)
