"""runner/machine/gc_freeze.py: what start-up builds is frozen, later garbage is still collected, Ctrl-C is kept."""

from __future__ import annotations

import gc
import weakref

import pytest

from runner.machine import gc_freeze


class Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen():
    yield
    gc.unfreeze()  # leave this test process's collector as it was


def test_a_paused_stretch_is_frozen_and_the_collector_runs_again_after_it():
    assert gc.isenabled()
    with gc_freeze.paused():
        assert not gc.isenabled()
        built = Node()
        ref = weakref.ref(built)
    assert gc.isenabled() and gc.get_freeze_count() > 0
    del built
    gc.collect()
    assert ref() is not None  # frozen: full collections no longer walk what start-up built
    later = Node()  # made after the stretch: collected as usual
    later_ref = weakref.ref(later)
    del later
    gc.collect()
    assert later_ref() is None


def test_a_paused_stretch_keeps_a_disabled_collector_disabled_and_survives_errors():
    gc.disable()
    try:
        with pytest.raises(KeyboardInterrupt), gc_freeze.paused():
            raise KeyboardInterrupt  # Ctrl-C during the model load reaches the job (no gc callback eats it)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_releasing_an_engine_collects_what_its_load_froze():
    from runner.engines.base import release_memory

    with gc_freeze.paused():  # as app.py loads an engine
        model = Node()
        ref = weakref.ref(model)
    del model  # the engine is dropped
    release_memory()
    assert ref() is None  # a sweep's next model does not load beside this one's leftovers


def test_importing_freezes_only_when_something_new_is_imported(tmp_path, monkeypatch):
    import sys

    (tmp_path / "module_made_by_this_test.py").write_text("VALUE = [1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "module_made_by_this_test", raising=False)
    gc.unfreeze()
    gc_freeze.import_frozen("json", "gc")  # imported already, as in a sweep's later jobs
    assert gc.get_freeze_count() == 0  # the previous job's garbage stays collectable
    gc_freeze.import_frozen("module_made_by_this_test", "a_module_that_is_not_installed")
    assert "module_made_by_this_test" in sys.modules and gc.get_freeze_count() > 0 and gc.isenabled()
