"""runner/heap.py: full collections skip what a job keeps for good, and nothing the job drops is leaked."""

from __future__ import annotations

import gc
import weakref

from runner import heap


class Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_settling_freezes_survivors_and_unfreezes_on_the_way_out():
    with heap.settling():
        node = Node()
        ref = weakref.ref(node)
        gc.collect()  # a full collection: `node` survives it, so it is frozen
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert ref() is not None  # frozen: full collections no longer walk it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # what the job dropped is collected once it ends (a sweep's next job runs here)


def test_garbage_made_between_full_collections_is_still_collected():
    with heap.settling():
        gc.collect()
        node = Node()  # made after the last full collection: young, not frozen
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None


def test_settling_unfreezes_even_when_the_job_fails():
    try:
        with heap.settling():
            gc.collect()
            raise RuntimeError("job failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
    assert heap._freeze_survivors not in gc.callbacks
