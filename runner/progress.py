"""One live view of a job: the model loading, then a bar per running dataset with requests, tok/s, elapsed
and ETA (a job's datasets share the engine, so their bars move together).

On a terminal it is a rich `Progress` display; log lines and prints appear above it. Elsewhere (CI,
pipes, Hydra launchers' job logs, SLURM) there is no cursor movement: a plain line at most every
`interval_s`, e.g. `spatial_reasoning 120/500 · 212 tok/s · KV 37% · ETA 1m50s` (KV-cache use where the
engine reports it: vLLM), one line per dataset still waiting for answers. Requests answered from the
response cache count at once. The bridge (adapters/lm_eval_model.py) reports each finished request, so
the bars follow every engine and every replica. `on_tick` (the job's MLflow progress metrics) is called
with (the job's requests done, its output tok/s) every `interval_s` while datasets run.
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

RATE_WINDOW_S = 10.0  # output tok/s over the last few seconds
_CACHED = re.compile(r"Cached requests: (\d+), Requests remaining: (\d+)")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class DatasetProgress:
    """One dataset's row: requests expected and answered, its output tokens, its rate and ETA. The bridge
    reports to it from whichever thread the engine answers in; the numbers are guarded by the job's lock."""

    def __init__(self, job: JobProgress, name: str) -> None:
        self.job = job
        self.name = name
        self.done = self.total = self.tokens = 0
        self.started = time.monotonic()
        self.recent: deque[tuple[float, int]] = deque()
        self.task = None  # its rich row, on a terminal

    def expect(self, requests: int) -> None:
        """Requests about to be sent to the engine (the bridge calls this per request-type call)."""
        with self.job._lock:
            self.total += requests
            self.job._refresh(self)

    def cached(self, requests: int) -> None:
        """Requests lm-eval answered from the response cache: done at once."""
        with self.job._lock:
            self.total += requests
            self.done += requests
            self.job._done += requests
            self.job._refresh(self)

    def advance(self, requests: int = 1, output_tokens: int = 0) -> None:
        now = time.monotonic()
        with self.job._lock:
            self.done += requests
            self.tokens += output_tokens
            self.recent.append((now, output_tokens))
            self.job._done += requests
            self.job._recent.append((now, output_tokens))
            self.job._refresh(self)

    def rate(self) -> float:
        """Output tokens per second of this dataset's requests finished in the last RATE_WINDOW_S seconds;
        while none finished, its average so far (answers count their tokens when they finish)."""
        with self.job._lock:
            return _rate(self.recent, self.tokens, self.started)

    def eta(self) -> float | None:
        with self.job._lock:
            elapsed = time.monotonic() - self.started
            if not self.done or self.total <= self.done:
                return None
            return elapsed / self.done * (self.total - self.done)

    def info(self, elapsed: bool = True) -> str:
        """`120/500 · 212 tok/s · ETA 1m50s` (elapsed instead of ETA until the first request is back; the
        live display has an elapsed column of its own)."""
        with self.job._lock:
            eta = self.eta()
            when = f"ETA {_duration(eta)}" if eta is not None else _duration(time.monotonic() - self.started)
            if self.job._narrow and eta is not None:
                when = _duration(eta)  # "1/3 · 12 tok/s · 1m10s": a 40-column terminal keeps every number
            parts = [f"{self.done}/{self.total or '?'}", f"{self.rate():.0f} tok/s"]
            if self.job._kv is not None and not self.job._narrow:
                parts.append(f"KV {self.job._kv:.0%}")
            return " · ".join(parts + ([when] if eta is not None or elapsed else []))

    def line(self) -> str:
        return f"{self.name} {self.info()}"


def _rate(recent: deque[tuple[float, int]], tokens: int, started: float) -> float:
    now = time.monotonic()
    while recent and recent[0][0] < now - RATE_WINDOW_S:
        recent.popleft()
    elapsed = max(now - started, 1e-6)
    if not recent:  # nothing finished lately (long answers): the average so far
        return tokens / elapsed
    return sum(t for _, t in recent) / min(RATE_WINDOW_S, elapsed)


class JobProgress:
    """The job's live display: the model load, then one row per running dataset. A job's datasets run side
    by side (runner/engines/gather.py), so several rows move at once."""

    def __init__(
        self,
        *,
        tty: bool | None = None,
        interval_s: float = 10.0,
        on_tick: Callable[[int, float], None] | None = None,
        kv_cache_usage: Callable[[], float | None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.on_tick = on_tick
        self.kv_cache_usage = kv_cache_usage  # the engine's KV-cache use, where it reports one
        self._kv: float | None = None
        self.enabled = enabled
        self._lock = threading.RLock()
        self._rows: list[DatasetProgress] = []  # the datasets running now, in the order they started
        self._threads: dict[int, DatasetProgress] = {}  # dataset thread -> its row (lm-eval's cache log lines)
        self._done = self._tokens = 0  # the whole job's answered requests
        self._started = time.monotonic()
        self._recent: deque[tuple[float, int]] = deque()
        self._rich = None  # rich.progress.Progress on a terminal, else None
        self._load_task = None
        self._loading: str | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._cache_watch = _CacheCounts(self)
        self._last_line = 0.0
        self._narrow = False  # a terminal under 60 columns: no bar, shorter numbers

    # --- the model load ---

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        """While the engine loads: elapsed time and the engine's last word (vLLM: weights, KV cache, warm-up)."""
        if not self.enabled:
            yield
            return
        start = time.monotonic()
        watcher = _LastMessage(self)
        logging.getLogger("vllm").addHandler(watcher)
        with self._lock:
            self._loading = f"loading {what}"
            if self.tty:
                self._load_task = self._bar().add_task(self._loading, total=None, info="")
            else:
                self._print(f"{self._loading} ...")
        try:
            yield
        finally:
            logging.getLogger("vllm").removeHandler(watcher)
            with self._lock:
                if self._rich is not None and self._load_task is not None:
                    self._rich.remove_task(self._load_task)
                self._load_task = self._loading = None
            self._print(f"loaded {what} in {time.monotonic() - start:.1f} s")

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
            self._threads[threading.get_ident()] = row
            if self.tty:
                row.task = self._bar().add_task(name, total=None, info="")
            if len(self._rows) == 1:  # the first dataset running: the ticker and the cache watch start
                logging.getLogger("lm_eval.api.model").addHandler(self._cache_watch)
                self._stop.clear()
                self._last_line = time.monotonic()
                self._ticker = threading.Thread(target=self._tick_loop, name="progress", daemon=True)
                self._ticker.start()
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
                    logging.getLogger("lm_eval.api.model").removeHandler(self._cache_watch)
                    self._stop.set()
                    ticker, self._ticker = self._ticker, None
            if ticker is not None and ticker is not threading.current_thread():
                ticker.join()

    def close(self) -> None:
        """The job is over: the live display goes (its finished lines stay above the summary)."""
        with self._lock:
            if self._rich is not None:
                self._rich.stop()
            self._rich = None

    # --- numbers ---

    def rate(self) -> float:
        """The job's output tokens per second over the last RATE_WINDOW_S seconds (every dataset's answers)."""
        with self._lock:
            return _rate(self._recent, sum(t for _, t in self._recent), self._started)

    # --- drawing ---

    def _tick_loop(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            if self._loading:
                continue  # the load has its own line; the datasets' numbers start with their first request
            if self.kv_cache_usage is not None:
                self._kv = self.kv_cache_usage()
            with self._lock:
                rows = list(self._rows)
                for row in rows:
                    self._refresh(row)
            if self._rich is None and now - self._last_line >= self.interval_s:
                # One line per dataset still waiting for answers (a finished one has its score line).
                for row in rows:
                    if row.total == 0 or row.done < row.total:
                        self._print(row.line())
                self._last_line = now
            if now - last_tick >= self.interval_s:
                last_tick = now
                if self.on_tick is not None:
                    self.on_tick(self._done, self.rate())

    def _refresh(self, row: DatasetProgress) -> None:
        if self._rich is not None and row.task is not None:
            self._rich.update(row.task, completed=row.done, total=row.total or None, info=row.info(False))

    def _bar(self):
        """The job's one rich display, started on first use; narrow terminals get no bar, only the numbers."""
        if self._rich is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            console = Console(file=sys.stdout)
            wide = console.width >= 60
            self._narrow = not wide
            name = None if wide else Column(width=17, no_wrap=True, overflow="ellipsis")
            columns = [TextColumn("{task.description}", table_column=name)]
            columns += [BarColumn(bar_width=24)] if wide else []
            columns += [TextColumn("{task.fields[info]}")]
            columns += [TimeElapsedColumn()] if wide else []
            self._rich = Progress(*columns, console=console, transient=True)
            self._rich.start()
        return self._rich

    def _print(self, text: str) -> None:
        self._last_line = time.monotonic()
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
        row = self.progress._threads.get(record.thread) if match else None
        if row is not None:
            row.cached(int(match[1]))

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
