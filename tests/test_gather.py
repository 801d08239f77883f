"""One engine pass per job (runner/engines/job_engine.py): datasets running side by side hand their requests to
one engine call per request type, each request keeps its own settings, answers reach each dataset as they
finish, and a dataset that fails, or an engine that fails, stops no one forever. A fake engine records the
calls; the real path is covered by the job tests (tests/test_e2e.py counts the engine calls of a job)."""

from __future__ import annotations

import random
import threading

import pytest

from runner.engines.base import Completion, Engine, LogLikelihood, SamplingSettings
from runner.engines.job_engine import Cancelled, JobEngine
from runner.job.evaluate import run_datasets


class RecordingEngine(Engine):
    """Answers `text-<first token>`; records every call with its prompts and per-prompt settings."""

    name = "recording"

    def __init__(self, before_each=None) -> None:
        super().__init__()
        self.calls: list[tuple[str, list, list]] = []
        self.before_each = before_each  # before_each(position): a hook run before each answer is reported

    @property
    def tokenizer(self):  # pragma: no cover - the bridge is not used here
        raise AssertionError

    def _generate(self, prompts, settings, on_result):
        self.calls.append(("generate", prompts, settings))
        out = []
        for position, prompt in enumerate(prompts):
            if self.before_each is not None:
                self.before_each(position)
            out.append(Completion(f"text-{prompt[0]}", len(prompt), settings[position].max_tokens))
            on_result(position, out[-1])
        return out

    def _loglikelihood(self, requests, on_result):
        self.calls.append(("loglikelihood", requests, []))
        return [LogLikelihood(-float(len(c)), True) for c, _ in requests]


class Dataset:
    def __init__(self, name: str) -> None:
        self.name = name


def run(engine: Engine, work: dict[str, object]) -> tuple[dict, dict, JobEngine]:
    """Run each `work[name](shared)` as a dataset of one job; returns results and errors by dataset name."""
    shared = JobEngine(engine)
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    run_datasets(
        [Dataset(name) for name in work],
        shared,
        lambda dataset: (dataset.name, work[dataset.name](shared)),
        on_result=lambda result: results.__setitem__(*result),
        on_error=lambda dataset, exc: errors.__setitem__(dataset.name, exc),
    )
    return results, errors, shared


def test_every_datasets_requests_go_to_the_engine_in_one_call_each_with_its_own_settings():
    engine = RecordingEngine()
    short, long = SamplingSettings(max_tokens=4), SamplingSettings(max_tokens=64, stop=("\n",))
    work = {
        "a": lambda shared: [c.text for c in shared.generate([[1], [2, 2]], short)],
        "b": lambda shared: [c.text for c in shared.generate([[3, 3, 3], [4]], long)],
        "c": lambda shared: [s.logprob for s in shared.loglikelihood([([5], [6]), ([7, 7], [8])])],
    }
    results, errors, shared = run(engine, work)
    assert not errors
    assert results == {"a": ["text-1", "text-2"], "b": ["text-3", "text-4"], "c": [-1.0, -2.0]}
    kinds = [kind for kind, _, _ in engine.calls]
    assert kinds == ["loglikelihood", "generate"] and shared.rounds == 1  # one call per request type
    _, prompts, settings = engine.calls[1]
    assert prompts == [[3, 3, 3], [2, 2], [1], [4]]  # longest first over the whole job
    assert settings == [long, short, short, long]  # each request kept its own dataset's settings


def test_a_dataset_is_released_to_score_while_the_engine_still_answers_the_others():
    released = threading.Event()

    def wait_for_release(position: int) -> None:
        if position == 1:  # "a"'s one request was answered first (its prompt is longest)
            assert released.wait(10), "dataset a was not released before the engine call ended"

    engine = RecordingEngine(before_each=wait_for_release)

    def a(shared):
        shared.generate([[1, 1, 1, 1]], SamplingSettings())
        released.set()  # scoring starts here, while the engine is still inside its call
        return "scored"

    results, errors, _ = run(engine, {"a": a, "b": lambda shared: shared.generate([[2], [3]], SamplingSettings())})
    assert not errors and results["a"] == "scored"
    assert len(engine.calls) == 1


def wait_for_waiting_datasets(shared: JobEngine, count: int, timeout: float = 30) -> None:
    """Block until `count` datasets wait for the engine (the timeout only bounds a hang). Called through
    `_pass_baton`, as a dataset waiting for answers does, so the others can run lm-eval code meanwhile."""
    with shared._cond:
        assert shared._cond.wait_for(lambda: shared._waiting == count, timeout), f"{count} dataset(s) never waited"


def test_a_dataset_that_fails_before_its_requests_does_not_hold_up_the_others():
    def broken(shared):
        shared._pass_baton(lambda: wait_for_waiting_datasets(shared, 1))  # "ok" already waits for the engine
        raise ValueError("no such task")

    engine = RecordingEngine()
    work = {"ok": lambda shared: shared.generate([[1]], SamplingSettings())[0].text, "broken": broken}
    done: list[tuple] = []
    job = threading.Thread(target=lambda: done.append(run(engine, work)), daemon=True)
    job.start()
    job.join(60)  # bounds a hang only: a pass still counting the failed dataset would wait for it forever
    assert done, "the engine pass still waits for the dataset that failed"
    results, errors, _ = done[0]
    assert results == {"ok": "text-1"}
    assert isinstance(errors["broken"], ValueError), errors
    assert len(engine.calls) == 1  # "ok" was answered by the pass it was waiting in


def test_a_second_request_type_waits_for_the_next_round():
    engine = RecordingEngine()

    def both(shared):  # a group mixing multiple-choice and generation tasks asks twice
        shared.loglikelihood([([1], [2])])
        return shared.generate([[3]], SamplingSettings())[0].text

    results, errors, shared = run(engine, {"both": both, "gen": lambda s: s.generate([[4]], SamplingSettings())})
    assert not errors and results["both"] == "text-3"
    assert [kind for kind, _, _ in engine.calls] == ["loglikelihood", "generate", "generate"]
    assert shared.rounds == 2


def test_an_engine_failure_fails_the_pass_and_wakes_every_waiting_dataset():
    def explode(position: int) -> None:
        raise RuntimeError("engine died")

    engine = RecordingEngine(before_each=explode)
    errors: dict[str, BaseException] = {}
    shared = JobEngine(engine)
    with pytest.raises(RuntimeError, match="engine died"):
        run_datasets(
            [Dataset("a"), Dataset("b")],
            shared,
            lambda dataset: shared.generate([[1]], SamplingSettings()),
            on_result=lambda result: None,
            on_error=lambda dataset, exc: errors.__setitem__(dataset.name, exc),
        )
    # The waiting datasets ended at once, each with Cancelled, and were reported before the error went on.
    assert all(isinstance(exc, Cancelled) for exc in errors.values()) and len(errors) == 2


def test_each_dataset_keeps_the_random_state_it_would_have_alone():
    """lm-eval seeds the global `random` at the start of each dataset's evaluation; the others running
    beside it must not move it (few-shot draws and bootstrap scores depend on it)."""

    def dataset(seed: int):
        def work(shared):
            random.seed(seed)
            before = random.random()
            shared.generate([[seed]], SamplingSettings())
            return before, random.random()

        return work

    alone = {}
    for seed in (1, 2):
        random.seed(seed)
        alone[seed] = (random.random(), random.random())
    results, errors, _ = run(RecordingEngine(), {"one": dataset(1), "two": dataset(2)})
    assert not errors
    assert results == {"one": alone[1], "two": alone[2]}
