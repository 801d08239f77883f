"""One loaded engine kept across the jobs of a sequential sweep.

Hydra's basic launcher runs a sweep's jobs one after another in one process. Consecutive jobs with
the same model and engine settings (one model over every category, say) reuse the loaded engine
instead of loading it again; a job with other settings first shuts the previous engine down, so
the next one starts from a clean slate. The last engine is shut down when the process exits.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable

from runner.engines.lazy import LazyEngine

log = logging.getLogger(__name__)

_current: tuple[str, LazyEngine] | None = None


def acquire(key: str, make: Callable[[], LazyEngine]) -> tuple[LazyEngine, bool]:
    """The engine for `key` and whether it was already loaded by an earlier job."""
    global _current
    if _current is not None and _current[0] == key:
        engine = _current[1]
        engine.reset_stats()
        log.info("Reusing the engine loaded by the previous job")
        return engine, engine.loaded
    release()
    engine = make()
    _current = (key, engine)
    return engine, False


def release() -> None:
    global _current
    if _current is not None:
        _current[1].shutdown()
        _current = None


atexit.register(release)
