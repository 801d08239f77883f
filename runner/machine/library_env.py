"""Process environment the engines expect, set before vLLM or MLflow are imported.

Only defaults: a variable the user already set wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def prepare_environment(cache_dir: str | Path) -> None:
    cache = Path(cache_dir)
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    defaults = {
        # vLLM writes its compile cache to ~/.cache/vllm and IPC socket files to /tmp otherwise.
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TMPDIR": str(cache / "tmp"),
        # vLLM spawns its workers; forking a process that already holds threads is unsafe.
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        # No usage reports from an evaluation box.
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
