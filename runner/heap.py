"""Python's cyclic garbage collector, kept off the objects that live until the process ends.

A job imports torch, vLLM, transformers, lm-eval and MLflow and loads a model: millions of objects that
live as long as the process. CPython walks every one of them in each full collection, and starts one
each time the heap has grown by a quarter. Measured on the default job (`bench/job_vs_lm_eval.py`'s
machine): 15 full collections, 4.3 s of a ~20 s start-up, then ~3 s for the final collection at exit.
vLLM freezes its engine's heap after start-up for the same reason (`vllm.utils.gc_utils.freeze_gc_heap`)
and unfreezes it at shutdown, so a torn-down engine is still collected; this does the same for the
runner's side of the process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def _freeze_survivors(phase: str, info: dict) -> None:
    # What survived a full collection is live now; the next ones skip it (gc.freeze is O(1)).
    if phase == "stop" and info["generation"] == 2:  # the oldest generation: a full collection
        gc.freeze()


@contextmanager
def settling() -> Iterator[None]:
    """While a job runs, each full collection freezes its survivors, so the next walks only new objects.

    On the way out everything is unfrozen: what the job held may be garbage now (a sweep's next job
    runs in this process), and the collector sees it again.
    """
    gc.callbacks.append(_freeze_survivors)
    try:
        yield
    finally:
        gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()


def freeze_for_exit() -> None:
    """Skip the interpreter's final collection over every object: the process exit reclaims them all
    (~3 s after a job here; vLLM's engine-core process does the same on ROCm)."""
    gc.freeze()
