"""One engine pass per job: the datasets of a job run side by side and their requests reach the engine together.

lm-eval's `simple_evaluate` stays the unit of work per dataset (its prompts, filters, scores and files are
exactly lm-eval's), but each dataset runs in a thread of its own. When a dataset's lm-eval asks the bridge
for answers, the bridge hands its requests here and the thread waits. Once every dataset still running is
waiting, the main thread sends all the waiting requests to the engine: one call per request type, each
request with its own sampling settings. vLLM's continuous batching then sees the whole job at once, and
the tail of a call (the last long answers, with the batch nearly empty) is paid once, not per dataset.

Answers are handed back as the engine finishes them; a dataset whose requests are all answered goes on
to score (a code dataset's sandbox runs start then) while the engine still generates for the others.

Only one dataset thread runs lm-eval code at a time (a baton passed between them): lm-eval, `datasets`
and the tokenizer were not written for threads, and each dataset keeps the global `random`/numpy
state it would have alone (swapped in with the baton), so its few-shot draws and scores do not depend
on which datasets run beside it. The engine runs only in the main thread, where the model was loaded
and where Ctrl-C arrives.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runner.console.handlers import FILE_ONLY
from runner.engines.base import Completion, Engine, EngineStats, LogLikelihood, OnResult, SamplingSettings, per_prompt

log = logging.getLogger(__name__)

# Request types, in the order one round sends them: log-likelihood scoring is quick, so multiple-choice
# datasets are released to score while the (longer) generation call runs.
KINDS = ("loglikelihood", "generate")


class RequestsFailedError(RuntimeError):
    """More of the job's requests failed in the engine than engine.max_failed_fraction allows."""


class Cancelled(RuntimeError):
    """The job's engine pass stopped (an engine error or Ctrl-C in the main thread): a waiting dataset gives up."""


@dataclass
class _Submission:
    kind: str
    items: list[Any]  # prompts (generate) or (context, continuation) pairs (loglikelihood)
    settings: list[SamplingSettings] | None
    on_result: OnResult | None
    results: list[Any] = field(default_factory=list)
    left: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class JobEngine:
    """The engine as the datasets of one job share it. `generate`/`loglikelihood` are the Engine calls the
    bridge makes, from a dataset thread; `run` (main thread) serves them until every dataset is done."""

    def __init__(self, engine: Engine, *, on_pass: Callable[[str, bool], None] | None = None) -> None:
        self.engine = engine
        self.on_pass = on_pass  # on_pass(kind, started): the bridge's response-cache telemetry brackets each call
        self._cond = threading.Condition()
        self._members = 0  # dataset threads not finished yet
        self._waiting = 0  # of those, waiting for answers
        self._pending: list[_Submission] = []
        self._baton = threading.Lock()
        self._cancelled: BaseException | None = None
        self.rounds = 0  # rounds of engine calls served (one per request-type phase of the job)
        self.calls: dict[str, int] = dict.fromkeys(KINDS, 0)

    # --- what the bridge sees: an engine ---

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings | Sequence[SamplingSettings],
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        each = per_prompt(settings, len(prompts))
        if prompts and not self._is_member():  # called outside `dataset()`: straight to the engine (tests, one-off use)
            return self.engine.generate(prompts, each, on_result)
        answers: list[Completion] = self._submit("generate", prompts, each, on_result)
        return answers

    def loglikelihood(
        self, requests: list[tuple[list[int], list[int]]], on_result: OnResult | None = None
    ) -> list[LogLikelihood]:
        if requests and not self._is_member():
            return self.engine.loglikelihood(requests, on_result)
        scores: list[LogLikelihood] = self._submit("loglikelihood", requests, None, on_result)
        return scores

    def _submit(
        self, kind: str, items: list[Any], settings: list[SamplingSettings] | None, on_result: OnResult | None
    ) -> list[Any]:
        """The answers to `items` (prompts, or (context, continuation) pairs), in order, from the job's next
        engine pass (a dataset thread waits here for it)."""
        if not items:
            return []
        submission = _Submission(kind, items, settings, on_result, [None] * len(items), len(items))
        with self._cond:
            if self._cancelled is not None:
                raise Cancelled("the job's engine pass stopped") from self._cancelled
            self._pending.append(submission)
            self._waiting += 1
            self._cond.notify_all()
        self._pass_baton(submission.done.wait)
        if submission.error is not None:
            raise Cancelled("the job's engine pass stopped") from submission.error
        return submission.results

    # --- dataset threads ---

    @contextmanager
    def dataset(self) -> Iterator[None]:
        """Run the body as one of the job's datasets (in its own thread, after `expect`)."""
        _local.member = self
        _local.state = None  # the global RNG state this dataset would have alone: simple_evaluate seeds it
        self._baton.acquire()
        try:
            yield
        finally:
            self._baton.release()
            _local.member = None
            with self._cond:
                self._members -= 1
                self._cond.notify_all()

    def expect(self, datasets: int) -> None:
        """Dataset threads about to start: a round waits for each of them (main thread, before starting them)."""
        with self._cond:
            self._members += datasets

    def _is_member(self) -> bool:
        return getattr(_local, "member", None) is self

    def _pass_baton(self, wait: Callable[[], Any]) -> None:
        """Let the other datasets run lm-eval while this one waits; take the baton (and its RNG state) back."""
        _local.state = (random.getstate(), _numpy_state())
        self._baton.release()
        try:
            wait()
        finally:
            self._baton.acquire()
            python_state, numpy_state = _local.state
            random.setstate(python_state)
            _set_numpy_state(numpy_state)

    # --- the main thread: serve rounds until every dataset is done ---

    def run(self, idle: Callable[[], None] | None = None, poll_s: float = 0.2) -> None:
        """Serve the datasets' requests until none is left running. `idle()` is called every `poll_s` while
        the datasets work (the main thread's turn to log finished datasets to MLflow)."""
        try:
            self._rounds(idle, poll_s)
        except BaseException as exc:  # Ctrl-C while waiting, or the engine failed: no dataset waits forever
            self.cancel(exc)
            raise

    def _rounds(self, idle: Callable[[], None] | None, poll_s: float) -> None:
        while True:
            with self._cond:
                ready = self._members == 0 or (self._pending and self._waiting == self._members)
                if not ready:
                    self._cond.wait(poll_s)  # short waits: Ctrl-C reaches the main thread promptly
                    ready = self._members == 0 or (self._pending and self._waiting == self._members)
                if ready and not self._pending and self._members == 0:
                    break
                batch = self._pending if ready else []
                if ready:
                    self._pending = []
            if idle is not None:
                idle()
            if batch:
                self._serve(batch)

    def cancel(self, error: BaseException) -> None:
        """Wake every waiting dataset with an error (the engine failed, or the job was interrupted)."""
        with self._cond:
            self._cancelled = error
            pending, self._pending = self._pending, []
        for submission in pending:
            self._finish(submission, error)

    def _serve(self, batch: list[_Submission]) -> None:
        self.rounds += 1
        for kind in KINDS:
            mine = [s for s in batch if s.kind == kind]
            if not mine:
                continue
            try:
                self._call(kind, mine)
            except BaseException as exc:
                for submission in batch:
                    if not submission.done.is_set():
                        self._finish(submission, exc)
                self.cancel(exc)
                raise

    def _call(self, kind: str, submissions: list[_Submission]) -> None:
        owners = [(s, i) for s in submissions for i in range(len(s.items))]
        if kind == "generate":
            # Longest prompts first over the whole job, as lm-eval's own models order a task's requests.
            owners.sort(key=lambda owner: -len(owner[0].items[owner[1]]))
        items = [s.items[i] for s, i in owners]

        def answered(position: int, result: Any) -> None:
            submission, index = owners[position]
            submission.results[index] = result
            if submission.on_result is not None:
                submission.on_result(index, result)
            submission.left -= 1
            if submission.left == 0:
                self._finish(submission, None)

        log.info("One %s pass for %d dataset(s): %d requests", kind, len(submissions), len(items), extra=FILE_ONLY)
        self.calls[kind] += 1
        if self.on_pass is not None:
            self.on_pass(kind, True)
        try:
            if kind == "generate":
                settings = [s.settings[i] for s, i in owners if s.settings is not None]  # always set for generate
                self.engine.generate(items, settings, on_result=answered)
            else:
                self.engine.loglikelihood(items, on_result=answered)
        finally:  # a pass that raises is over too: its telemetry and the watchdog's watch of it end here
            if self.on_pass is not None:
                self.on_pass(kind, False)

    def _finish(self, submission: _Submission, error: BaseException | None) -> None:
        if submission.done.is_set():
            return
        submission.error = error
        with self._cond:
            self._waiting -= 1
            self._cond.notify_all()
        submission.done.set()


_local = threading.local()


def _numpy_state() -> Any:
    import sys

    numpy = sys.modules.get("numpy")  # lm-eval imports it; a job that never did has no state to keep
    return numpy.random.get_state() if numpy is not None else None


def _set_numpy_state(state: Any) -> None:
    if state is not None:
        import numpy

        numpy.random.set_state(state)
