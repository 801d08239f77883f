"""No hangs: the engine load and each engine pass are watched, and no progress for `engine.load_timeout_s`
(loading) or `engine.stall_timeout_s` (no request answered during a pass) ends the job FAILED, with one
message and no process of the job left behind.

A hung engine sits in native code (a collective waiting for ranks that never start, a device that stopped
answering), where no Python exception reaches the main thread; so the watchdog does not try to unwind it.
From its own thread it ends the job's MLflow run FAILED with the reason (and its `tracking.json`), stops
every process the job started, prints the message and ends the process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from runner.machine.stopping import stop_children

log = logging.getLogger(__name__)

EXIT_CODE = 3  # a job the watchdog ended (2: bad input; 1: a bug; 130: Ctrl-C)


class Watchdog:
    def __init__(self, progress: Callable[[], int], on_timeout: Callable[[str], None], poll_s: float = 1.0) -> None:
        self._progress = progress  # requests done so far: any change is progress
        # ends the run FAILED with the message (runner/tracking/mlflow_run.py Tracker.fail_now)
        self._on_timeout = on_timeout
        self._poll_s = poll_s
        self._phases: list[tuple[str, str, float]] = []  # (what, setting, timeout): the innermost is watched
        self._since = time.monotonic()
        self._seen = progress()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def watching(self, what: str, setting: str, timeout_s: float) -> Iterator[None]:
        """No progress in `what` for `timeout_s` seconds (the value of `setting`) ends the job. Phases nest:
        the engine loads lazily, inside the first engine pass."""
        self.begin(what, setting, timeout_s)
        try:
            yield
        finally:
            self.end()

    def begin(self, what: str, setting: str, timeout_s: float) -> None:
        self._seen, self._since = self._progress(), time.monotonic()
        self._phases.append((what, setting, timeout_s))

    def end(self) -> None:
        if self._phases:
            self._phases.pop()
        self._since = time.monotonic()  # the phase around it starts counting afresh

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            phase = self._phases[-1] if self._phases else None
            done = self._progress()
            if done != self._seen:
                self._seen, self._since = done, time.monotonic()
            if phase is None:
                continue
            what, setting, timeout_s = phase
            if time.monotonic() - self._since > timeout_s:
                self._fire(
                    f"No progress {what} for {timeout_s:.0f} s ({setting}={timeout_s:g}): the engine looks hung "
                    "(a parallel setting this machine cannot run, a device that stopped answering, or a model far "
                    "too slow for this hardware). The job was stopped and its run ended FAILED; answers received "
                    f"so far are in the response cache. Check runner.log for the engine's last words, or raise "
                    f"{setting} if it was only slow."
                )

    def _fire(self, message: str) -> None:
        try:
            self._on_timeout(message)
        except Exception:  # noqa: BLE001 - the job must still stop
            log.exception("Could not end the run after the watchdog fired")
        stop_children(grace_s=5.0)
        print(f"error: {message}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(EXIT_CODE)
