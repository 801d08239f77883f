"""Python's cyclic garbage collector, kept off the objects that live until the process ends.

A job imports torch, vLLM, transformers, lm-eval and MLflow and loads a model: millions of objects that
live as long as the process, and almost no garbage. CPython walks every tracked object in each full
collection, and starts one each time the heap has grown by a quarter. Measured on the default job
(`bench/job_vs_lm_eval.py`'s machine): 15 full collections took 4.3 s of a ~20 s start-up, and the final
collection at exit ~3 s. So the big imports run with the collector paused, and what they built is frozen
(never walked again): start-up's collections now take ~0.3 s, exit's none. vLLM freezes its engine's
heap after start-up for the same reason (`vllm.utils.gc_utils.freeze_gc_heap`) and unfreezes it at
shutdown, so a torn-down engine is still collected.

No `gc.callbacks` here: Python runs a pending Ctrl-C wherever bytecode runs next, a callback included,
and the collector drops exceptions raised in callbacks, so a callback can swallow a Ctrl-C.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """Run a stretch of imports with no automatic collection, then freeze what it built.

    Explicit `gc.collect()` calls still run; the little garbage imports leave is frozen with the rest, and
    collected once an engine's teardown unfreezes the heap (vLLM's shutdown, `release_memory`).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def import_frozen(*names: str) -> None:
    """Import these modules with the collector paused, then freeze what they built. When all are imported
    already (a sweep's later jobs), nothing is frozen: a freeze would also keep the last job's garbage."""
    missing = [name for name in names if name not in sys.modules and importlib.util.find_spec(name.split(".")[0])]
    if not missing:
        return
    with paused():
        for name in missing:
            importlib.import_module(name)


def freeze_for_exit() -> None:
    """Skip the interpreter's final collection over every object: the process exit reclaims them all
    (~3 s after a job here; vLLM's engine-core process does the same on ROCm)."""
    gc.freeze()
