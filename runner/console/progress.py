"""One live view of a job: the model loading, then the job's requests (done/total, output tok/s, KV-cache
use, ETA) and a bar per running dataset.

A job's datasets share one engine pass (runner/engines/job_engine.py), so speed and time left are the job's,
not a dataset's: a dataset's own rate would only say how the engine's batch happened to be split, and its
ETA would be wrong by however much of the pass the other datasets take. The job's ETA counts only
requests the engine answered (those from the response cache take no time).

On a terminal it is a rich `Progress` display, a `job` row over one row per dataset; log lines and
prints appear above it. Elsewhere (CI, pipes, Hydra launchers' job logs, SLURM) there is no cursor
movement: one plain line at most every `interval_s`, e.g.
`job 120/250 · 212 tok/s · KV 37% · ETA 1m50s · 3/5 datasets waiting` (KV-cache use where the engine
reports it: vLLM). The bridge (adapters/lm_eval_model.py) reports each finished request, so the numbers
follow every engine and every replica. `on_tick` (the job's MLflow progress metrics) is called with (the
job's requests done, its output tok/s) every `interval_s` while datasets run.

Time comes from `clock` (time.monotonic) and the ticker thread calls `tick()` every `tick_s` seconds; tests
pass a clock of their own and `tick_s=None` (no ticker thread) and call `tick()` themselves.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, TaskID

RATE_WINDOW_S = 10.0  # output tok/s over the last few seconds
_CACHED = re.compile(r"Cached requests: (\d+), Requests remaining: (\d+)")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Load:
    """What the code inside `JobProgress.loading` reports back: the engine's own model load
    (EngineStats.load_seconds, the summary's `model load` and MLflow's `model_load_s`). The `loaded` line
    names it beside the whole wait, whose rest is importing the engine's libraries (vLLM, torch)."""

    model_s: float | None = None


def loaded_line(what: str, total_s: float, model_s: float | None) -> str:
    """`loaded smollm2_135m on cpu in 26.4 s (imports 7.3 s, model load 19.1 s)`: one load, two parts, so the
    summary's `model load 19.1 s` is the same number and not a second, contradicting load time."""
    line = f"loaded {what} in {total_s:.1f} s"
    if model_s is not None and 0 < model_s <= total_s and total_s - model_s >= 0.1:
        imports = round(total_s, 1) - round(model_s, 1)  # the parts add up to the total as shown
        line += f" (imports {imports:.1f} s, model load {model_s:.1f} s)"
    return line


class DatasetProgress:
    """One dataset's row: requests expected and answered. The bridge reports to it from whichever thread
    the engine answers in; the numbers are guarded by the job's lock and added to the job's."""

    def __init__(self, job: JobProgress, name: str) -> None:
        self.job = job
        self.name = name
        self.done = self.total = 0
        self.task: TaskID | None = None  # its rich row, on a terminal

    def expect(self, requests: int) -> None:
        """Requests about to be sent to the engine (the bridge calls this per request-type call)."""
        with self.job._lock:
            self.total += requests
            self.job._expect(requests)
            self.job._refresh(self)

    def cached(self, requests: int) -> None:
        """Requests lm-eval answered from the response cache: done at once."""
        with self.job._lock:
            self.total += requests
            self.done += requests
            self.job._cached(requests)
            self.job._refresh(self)

    def advance(self, requests: int = 1, output_tokens: int = 0, input_tokens: int = 0) -> None:
        with self.job._lock:
            self.done += requests
            self.job._answer(requests, output_tokens, input_tokens)
            self.job._refresh(self)

    @property
    def waiting(self) -> bool:
        return self.total == 0 or self.done < self.total


def _counts(done: int, total: int) -> str:
    return f"{done}/{total or '?'}"


def _rate(recent: deque[tuple[float, int]], tokens: int, started: float, now: float) -> float:
    while recent and recent[0][0] < now - RATE_WINDOW_S:
        recent.popleft()
    elapsed = max(now - started, 1e-6)
    if not recent:  # nothing finished lately (long answers): the average so far
        return tokens / elapsed
    return sum(t for _, t in recent) / min(RATE_WINDOW_S, elapsed)


class JobProgress:
    """The job's live display: the model load, then one row per running dataset. A job's datasets run side
    by side (runner/engines/job_engine.py), so several rows move at once."""

    def __init__(
        self,
        *,
        tty: bool | None = None,
        interval_s: float = 10.0,
        on_tick: Callable[[int, float], None] | None = None,
        kv_cache_usage: Callable[[], float | None] | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float | None = 1.0,
    ) -> None:
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.on_tick = on_tick
        self.kv_cache_usage = kv_cache_usage  # the engine's KV-cache use, where it reports one
        self._kv: float | None = None
        self.enabled = enabled
        self._clock = clock
        self.tick_s = tick_s  # the ticker thread's beat; None: no thread, the caller calls tick()
        self._lock = threading.RLock()
        self._rows: list[DatasetProgress] = []  # the datasets running now, in the order they started
        self._threads: dict[int, DatasetProgress] = {}  # dataset thread -> its row (lm-eval's cache log lines)
        self._done = self._total = 0  # the whole job's requests: done (engine or cache) and expected
        self._answered = self._tokens = 0  # those the engine answered, and their output tokens
        self._started = clock()
        self._sent: float | None = None  # when the first request went to the engine
        self._recent: deque[tuple[float, int]] = deque()
        self._inputs = 0  # the answered requests' input tokens (log-likelihood requests: context and continuation)
        self._recent_requests: deque[tuple[float, int]] = deque()
        self._recent_inputs: deque[tuple[float, int]] = deque()
        self._datasets = 0  # datasets started in this job
        self._job_task: TaskID | None = None  # the job's rich row, on a terminal
        self._pace_text: list[str] = []  # its rate and ETA, redrawn once a second (its counts, on every answer)
        self._rich: Progress | None = None  # on a terminal (rich is imported only there)
        self._load_task: TaskID | None = None
        self._loading: str | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._cache_watch = _CacheCounts(self)
        self._last_line = self._last_tick = 0.0
        self._narrow = False  # a terminal under 60 columns: no bar, shorter numbers

    # --- the model load ---

    @contextmanager
    def loading(self, what: str) -> Iterator[Load]:
        """While the engine loads: elapsed time and the engine's last word (vLLM: weights, KV cache, warm-up).
        The caller sets the yielded Load's `model_s` to the engine's own load time, for the `loaded` line."""
        load = Load()
        if not self.enabled:
            yield load
            return
        start = self._clock()
        watcher = _LastMessage(self)
        logging.getLogger("vllm").addHandler(watcher)
        with self._lock:
            self._loading = f"loading {what}"
            if self.tty:
                self._load_task = self._bar().add_task(self._loading, total=None, info="")
            else:
                self._print(f"{self._loading} ...")
        loaded = False
        try:
            yield load
            loaded = True
        finally:
            logging.getLogger("vllm").removeHandler(watcher)
            with self._lock:
                if self._rich is not None and self._load_task is not None:
                    self._rich.remove_task(self._load_task)
                self._load_task = self._loading = None
                if self._sent is not None:  # requests sent before the model was loaded: the pace starts now
                    self._sent = self._clock()
            if loaded:  # a failed load says nothing here: its error follows
                self._print(loaded_line(what, self._clock() - start, load.model_s))

    def phase(self, text: str) -> None:
        with self._lock:
            if self._rich is not None and self._load_task is not None:
                self._rich.update(self._load_task, info=text)

    # --- datasets ---

    @contextmanager
    def dataset(self, name: str) -> Iterator[DatasetProgress]:
        """A dataset's row while it runs (in the dataset's own thread: lm-eval's cache counts are matched
        to the row by the thread that logs them)."""
        row = DatasetProgress(self, name)
        if not self.enabled:
            yield row
            return
        with self._lock:
            self._rows.append(row)
            self._datasets += 1
            self._threads[threading.get_ident()] = row
            if self.tty:
                if self._job_task is None:
                    self._job_task = self._bar().add_task("job", total=None, info="")
                row.task = self._bar().add_task(name, total=None, info="")
            first = len(self._rows) == 1
            if first:  # the first dataset running: the ticker and the cache watch start
                self._stop.clear()
                self._last_line = self._last_tick = self._clock()
                if self.tick_s is not None:
                    self._ticker = threading.Thread(target=self._tick_loop, name="progress", daemon=True)
                    self._ticker.start()
        if first:  # outside our lock, as removeHandler below: logging takes its own module lock here
            logging.getLogger("lm_eval.api.model").addHandler(self._cache_watch)
        try:
            yield row
        finally:
            ticker = None
            with self._lock:
                self._rows.remove(row)
                self._threads.pop(threading.get_ident(), None)
                if self._rich is not None and row.task is not None:
                    self._rich.remove_task(row.task)
                if not self._rows:
                    if self._rich is not None and self._job_task is not None:
                        self._rich.remove_task(self._job_task)
                    self._job_task = None
                    self._stop.set()
                    ticker, self._ticker = self._ticker, None
            if ticker is not None:
                # Outside our lock: a Ctrl-C that interrupted logging's own lock in the main thread leaves it
                # held, and this thread must not then hold ours while it waits (close() takes ours).
                logging.getLogger("lm_eval.api.model").removeHandler(self._cache_watch)
                if ticker is not threading.current_thread():
                    ticker.join()

    def close(self) -> None:
        """The job is over: the live display goes (its finished lines stay above the summary)."""
        with self._lock:
            if self._rich is not None:
                self._rich.stop()
            self._rich = None

    # --- numbers (callers hold the lock) ---

    def _expect(self, requests: int) -> None:
        self._total += requests
        if self._sent is None:
            self._sent = self._clock()

    def _cached(self, requests: int) -> None:
        self._total += requests
        self._done += requests

    def _answer(self, requests: int, output_tokens: int, input_tokens: int = 0) -> None:
        self._done += requests
        self._answered += requests
        self._tokens += output_tokens
        self._inputs += input_tokens
        now = self._clock()
        self._recent.append((now, output_tokens))
        self._recent_requests.append((now, requests))
        self._recent_inputs.append((now, input_tokens))

    @property
    def done(self) -> int:
        """The job's requests done so far, by the engine or the cache (runner/job/watchdog.py watches it move)."""
        return self._done

    def rate(self) -> float:
        """The job's output tokens per second over the last RATE_WINDOW_S seconds (every dataset's answers);
        while none finished lately, its average since the first request was sent."""
        with self._lock:
            now = self._clock()
            return _rate(self._recent, self._tokens, self._sent or now, now)

    def _speed(self) -> str:
        """Output tok/s; for a job whose answers so far are all scores (log-likelihood requests: multiple choice,
        perplexity), which generate nothing, requests/s and input tok/s instead of a `0 tok/s` that says nothing."""
        if self._tokens or not self._answered:
            return f"{self.rate():.0f} tok/s"
        now = self._clock()
        since = self._sent or now
        requests = _rate(self._recent_requests, self._answered, since, now)
        inputs = _rate(self._recent_inputs, self._inputs, since, now)
        return f"{requests:.1f} req/s · {inputs:.0f} input tok/s"

    def eta(self) -> float | None:
        """Seconds left at the pace the engine has answered so far (cache hits are not pace). None until a
        tenth of the engine's requests are back: continuous batching starts them all at once, so the first
        answers (the shortest) would promise a pace the batch does not keep."""
        with self._lock:
            engine_total = self._total - (self._done - self._answered)
            if self._answered < max(1, engine_total / 10) or self._total <= self._done or self._sent is None:
                return None
            return (self._clock() - self._sent) / self._answered * (self._total - self._done)

    def info(self, elapsed: bool = True) -> str:
        """`120/250 · 212 tok/s · KV 37% · ETA 1m50s` (elapsed instead of ETA until the first answer is
        back; the live display has an elapsed column of its own)."""
        with self._lock:
            return " · ".join([_counts(self._done, self._total), *self._pace(elapsed)])

    def _pace(self, elapsed: bool) -> list[str]:
        """The job's rate, KV-cache use and ETA (or time so far)."""
        eta = self.eta()
        since = self._sent or self._started
        when = f"ETA {_duration(eta)}" if eta is not None else _duration(self._clock() - since)
        if self._narrow and eta is not None:
            when = _duration(eta)  # "1/3 · 12 tok/s · 1m10s": a 40-column terminal keeps every number
        parts = [self._speed()]
        if self._kv is not None and not self._narrow:
            parts.append(f"KV {self._kv:.0%}")
        return parts + ([when] if eta is not None or elapsed else [])

    def line(self) -> str:
        """The plain line: the job's numbers and how many of its datasets still wait for answers."""
        with self._lock:
            waiting = sum(row.waiting for row in self._rows)
            return f"job {self.info()} · {waiting}/{self._datasets} datasets waiting"

    # --- drawing ---

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            self.tick()

    def tick(self) -> None:
        """One beat of the ticker (every `tick_s` while datasets run): the rate and ETA redrawn, and every
        `interval_s` the plain line (off a terminal) and `on_tick`."""
        now = self._clock()
        if self._loading:
            return  # the load has its own line; the datasets' numbers start with their first request
        if self.kv_cache_usage is not None:
            self._kv = self.kv_cache_usage()
        with self._lock:
            self._pace_text = self._pace(False)
            self._show_job()
            waiting = any(row.waiting for row in self._rows)
        if self._rich is None and waiting and now - self._last_line >= self.interval_s:
            self._print(self.line())  # one line for the job (a finished dataset has its score line)
        if now - self._last_tick >= self.interval_s:
            self._last_tick = now
            if self.on_tick is not None:
                self.on_tick(self._done, self.rate())

    def _refresh(self, row: DatasetProgress) -> None:
        """Counts only, on every answer; the rate and ETA text is redrawn by the ticker once a second."""
        if self._rich is not None and row.task is not None:
            self._rich.update(row.task, completed=row.done, total=row.total or None, info=_counts(row.done, row.total))
        self._show_job()

    def _show_job(self) -> None:
        """The job's row: its counts (fresh) and the ticker's last rate and ETA."""
        if self._rich is not None and self._job_task is not None:
            info = " · ".join([_counts(self._done, self._total), *self._pace_text])
            self._rich.update(self._job_task, completed=self._done, total=self._total or None, info=info)

    def _bar(self) -> Progress:
        """The job's one rich display, started on first use; narrow terminals get no bar, only the numbers."""
        if self._rich is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            console = Console(file=sys.stdout)
            wide = console.width >= 60
            self._narrow = not wide
            name = None if wide else Column(width=17, no_wrap=True, overflow="ellipsis")
            columns: list[ProgressColumn] = [TextColumn("{task.description}", table_column=name)]
            columns += [BarColumn(bar_width=24)] if wide else []
            columns += [TextColumn("{task.fields[info]}")]
            columns += [TimeElapsedColumn()] if wide else []
            self._rich = Progress(*columns, console=console, transient=True)
            self._rich.start()
        return self._rich

    def _print(self, text: str) -> None:
        self._last_line = self._clock()
        print(time.strftime("%H:%M:%S ") + text, flush=True)


class _LastMessage(logging.Handler):
    """Shows the engine's latest INFO message beside the load line: what it is doing now."""

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().splitlines()
        self.progress.phase(lines[0][:60] if lines else "")


class _CacheCounts(logging.Handler):
    """lm-eval's cache says how many requests it answered ("Cached requests: N, Requests remaining: M"), in
    the thread of the dataset it answered for."""

    def emit(self, record: logging.LogRecord) -> None:
        match = _CACHED.search(record.getMessage())
        row = self.progress._threads.get(record.thread) if match and record.thread is not None else None
        if match and row is not None:
            row.cached(int(match[1]))

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
