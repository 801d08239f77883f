"""One live view of a job: the model loading, then a bar per dataset with requests, tok/s, elapsed and ETA.

On a terminal it is a rich `Progress` display; log lines and prints appear above it. Elsewhere (CI,
pipes, Hydra launchers' job logs, SLURM) there is no cursor movement: a plain line at most every
`interval_s`, e.g. `spatial_reasoning 120/500 · 212 tok/s · KV 37% · ETA 1m50s` (KV-cache use where the
engine reports it: vLLM). Requests answered from the
response cache count at once. The bridge (adapters/lm_eval_model.py) reports each finished request, so
one bar follows every engine and every replica. `on_tick` (the job's MLflow progress metrics) is called
with (requests done, output tok/s) every `interval_s` while a dataset runs.
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


class JobProgress:
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
        self._name: str | None = None
        self._done = self._total = self._tokens = 0
        self._started = 0.0
        self._recent: deque[tuple[float, int]] = deque()
        self._rich = None  # rich.progress.Progress on a terminal, else None
        self._task = None  # the running dataset's row
        self._load_task = None
        self._loading: str | None = None
        self._stop = threading.Event()
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
    def dataset(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._lock:
            self._name, self._done, self._total, self._tokens = name, 0, 0, 0
            self._started = time.monotonic()
            self._recent.clear()
            if self.tty:
                self._task = self._bar().add_task(name, total=None, info="")
        cache_watch = _CacheCounts(self)
        lm_eval_log = logging.getLogger("lm_eval.api.model")
        lm_eval_log.addHandler(cache_watch)
        self._stop.clear()
        self._last_line = time.monotonic()
        ticker = threading.Thread(target=self._tick_loop, name="progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            lm_eval_log.removeHandler(cache_watch)
            self._stop.set()
            ticker.join()
            with self._lock:
                if self._rich is not None and self._task is not None:
                    self._rich.remove_task(self._task)
                self._task = self._name = None

    def expect(self, requests: int) -> None:
        """Requests about to be sent to the engine (the bridge calls this per request-type call)."""
        with self._lock:
            self._total += requests
            self._refresh()

    def cached(self, requests: int) -> None:
        """Requests lm-eval answered from the response cache: done at once."""
        with self._lock:
            self._total += requests
            self._done += requests
            self._refresh()

    def advance(self, requests: int = 1, output_tokens: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._done += requests
            self._tokens += output_tokens
            self._recent.append((now, output_tokens))
            self._refresh()

    def close(self) -> None:
        """The job is over: the live display goes (its finished lines stay above the summary)."""
        with self._lock:
            if self._rich is not None:
                self._rich.stop()
            self._rich = None

    # --- numbers ---

    def rate(self) -> float:
        """Output tokens per second of the requests finished in the last RATE_WINDOW_S seconds; while none
        finished, the dataset's average so far (answers count their tokens when they finish)."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            elapsed = max(now - self._started, 1e-6)
            if not self._recent:  # nothing finished lately (long answers): the dataset's average so far
                return self._tokens / elapsed
            return sum(tokens for _, tokens in self._recent) / min(RATE_WINDOW_S, elapsed)

    def eta(self) -> float | None:
        with self._lock:
            elapsed = time.monotonic() - self._started
            if not self._done or self._total <= self._done:
                return None
            return elapsed / self._done * (self._total - self._done)

    def info(self, elapsed: bool = True) -> str:
        """`120/500 · 212 tok/s · ETA 1m50s` (elapsed instead of ETA until the first request is back; the
        live display has an elapsed column of its own)."""
        with self._lock:
            eta = self.eta()
            when = f"ETA {_duration(eta)}" if eta is not None else _duration(time.monotonic() - self._started)
            if self._narrow and eta is not None:
                when = _duration(eta)  # "1/3 · 12 tok/s · 1m10s": a 40-column terminal keeps every number
            parts = [f"{self._done}/{self._total or '?'}", f"{self.rate():.0f} tok/s"]
            if self._kv is not None and not self._narrow:
                parts.append(f"KV {self._kv:.0%}")
            return " · ".join(parts + ([when] if eta is not None or elapsed else []))

    def line(self) -> str:
        return f"{self._name} {self.info()}"

    # --- drawing ---

    def _tick_loop(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            if self._loading:
                continue  # the load has its own line; the dataset's numbers start with its first request
            if self.kv_cache_usage is not None:
                self._kv = self.kv_cache_usage()
            with self._lock:
                self._refresh()
            if self._rich is None and now - self._last_line >= self.interval_s:
                self._print(self.line())
            if now - last_tick >= self.interval_s:
                last_tick = now
                if self.on_tick is not None:
                    self.on_tick(self._done, self.rate())

    def _refresh(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, completed=self._done, total=self._total or None, info=self.info(False))

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
    """lm-eval's cache says how many requests it answered ("Cached requests: N, Requests remaining: M")."""

    def emit(self, record: logging.LogRecord) -> None:
        match = _CACHED.search(record.getMessage())
        if match:
            self.progress.cached(int(match[1]))

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
