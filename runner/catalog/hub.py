"""The Hugging Face hub as this process may use it: its local cache, and whether it can be reached at all.

A job, `mode=plan`, `mode=list` and `mode=doctor` read the hub's cache on disk (never the network) to say
what is present. Whether the hub itself answers is decided once per process, by one TCP connection with
a short timeout (`unreachable`), and only where something would otherwise go to the network. Without
that decision, every library that loads from the hub (huggingface_hub, transformers, datasets) retries
a dead hub with backoff, about a minute each, before failing with a traceback. When the hub cannot be
reached, `blocked` switches this process's libraries to offline mode: what is cached loads at once, and
what is not fails with the runner's own paragraph.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

ENDPOINT = "https://huggingface.co"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
_forced = False  # this process turned offline mode on itself (go_offline): the user did not ask for it


def cache_dir() -> Path:
    """The hub cache, as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def model_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub model at `revision` (a branch, tag or commit; None: main), as
    huggingface_hub resolves it when loading offline, or None: another revision's files do not count."""
    from huggingface_hub import try_to_load_from_cache

    # cache_dir given: huggingface_hub reads HF_HUB_CACHE once, at import; the runner reads it each time.
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir(), revision=revision or "main")
    return Path(found).parent if isinstance(found, str) else None  # snapshots/<commit>/config.json


def dataset_snapshot(repo_id: str) -> Path | None:
    """The newest cached snapshot folder of a hub dataset (datasets are not pinned to a revision), or None."""
    snapshots = cache_dir() / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return found[-1] if found else None


def offline_by_setting() -> bool:
    """The user (or the Makefile) put the hub libraries in offline mode."""
    names = (*OFFLINE_VARS, "TRANSFORMERS_OFFLINE")  # huggingface_hub honours the old transformers name too
    return not _forced and any(os.environ.get(name, "0").lower() in _TRUE for name in names)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", ENDPOINT)


@functools.cache
def unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the hub (HF_ENDPOINT) cannot be reached from here, or None. One TCP connection, once per process."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None  # through a proxy a direct connection proves nothing: let huggingface_hub try
    parts = urlsplit(endpoint())
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        return f"the hub ({endpoint()}) cannot be reached: {exc}"
    return None


def blocked() -> str | None:
    """Why this process may not download from the hub (None: it may). An unreachable hub also puts the hub
    libraries in offline mode, in this process and the engine processes it starts, so nothing retries it."""
    if offline_by_setting():
        return "offline mode is set (HF_HUB_OFFLINE=1)"
    if _forced:  # decided earlier in this process
        return unreachable()
    why = unreachable()
    if why is not None:
        go_offline()
    return why


def go_offline() -> None:
    """Offline mode for huggingface_hub, transformers and datasets: the variables, for processes started
    from here and modules not imported yet, and the flags of those already imported (read at import)."""
    global _forced
    _forced = True
    for name in OFFLINE_VARS:
        os.environ[name] = "1"
    flags = {"huggingface_hub.constants": ("HF_HUB_OFFLINE",), "datasets.config": OFFLINE_VARS}
    for module, names in flags.items():  # transformers asks huggingface_hub's flag at each call
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, True)


def describe() -> str:
    """One line for `mode=doctor`: offline by setting, online and reachable, or online but unreachable."""
    if offline_by_setting():
        return "offline (HF_HUB_OFFLINE=1): local weights and cached datasets only"
    why = unreachable()
    if why is not None:
        return f"unreachable: {why}. Jobs run offline (local weights and cached datasets only)"
    return f"online: {endpoint()} answers; weights and datasets not cached are downloaded"
