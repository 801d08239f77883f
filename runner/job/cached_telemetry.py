"""Engine measurements kept beside lm-eval's response cache, so a job answered from the cache still has them.

lm-eval's cache stores each answer's text under `hash_args(request type, request args)`. Next to it
(`<cache>.telemetry.sqlite`) this module stores, under the same key, which engine pass produced the answer
and its tokens and latency, and for each pass (one engine call of the bridge) the engine, its busy
seconds, requests and tokens. A job whose answers all come from the cache then reports the throughput of
the passes that generated them, marked `throughput_source=response_cache`, instead of nothing.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.engines.base import Completion, EngineStats, _percentile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (id TEXT PRIMARY KEY, engine TEXT, seconds REAL, requests INTEGER,
    input_tokens INTEGER, output_tokens INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, pass TEXT, input_tokens INTEGER, output_tokens INTEGER,
    latency_s REAL);
"""


class CachedTelemetry:
    def __init__(self, cache: str) -> None:
        self.path = Path(f"{cache}.telemetry.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Parallel sweep jobs may share a model's cache: wait for each other's writes rather than fail.
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        self._pass: str | None = None
        self._before: tuple[float, int, int, int] = (0.0, 0, 0, 0)

    def start_pass(self, stats: EngineStats) -> None:
        self._pass = uuid.uuid4().hex
        self._before = (stats.generate_seconds, stats.requests, stats.prompt_tokens, stats.output_tokens)

    def answer(self, key: str, completion: Completion) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
            (key, self._pass, completion.prompt_tokens, completion.output_tokens, completion.latency_s),
        )
        self._db.commit()  # per answer, as lm-eval's cache commits: no write lock held across a long pass

    def end_pass(self, engine: str, stats: EngineStats) -> None:
        seconds, requests, prompt, output = self._before
        self._db.execute(
            "INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self._pass,
                engine,
                stats.generate_seconds - seconds,
                stats.requests - requests,
                stats.prompt_tokens - prompt,
                stats.output_tokens - output,
                time.time(),
            ),
        )
        self._db.commit()
        self._pass = None

    def metrics(self, keys: Iterable[str]) -> dict[str, float]:
        """The throughput and latency of the engine passes that generated the answers under `keys`;
        empty when none of them was recorded (answers cached before this record existed)."""
        keys = list(keys)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[start : start + 500]
            rows += self._db.execute(
                f"SELECT pass, latency_s FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
        passes = sorted({p for p, _ in rows if p})
        marks = ",".join("?" * len(passes))
        query = f"SELECT seconds, requests, input_tokens, output_tokens FROM passes WHERE id IN ({marks})"
        found = self._db.execute(query, passes).fetchall()
        seconds = sum(r[0] for r in found)
        if not found or seconds <= 0:
            return {}
        metrics = {
            "output_tokens_per_s": sum(r[3] for r in found) / seconds,
            "input_tokens_per_s": sum(r[2] for r in found) / seconds,
            "requests_per_s": sum(r[1] for r in found) / seconds,
            "cached_answers_with_telemetry": float(len(rows)),
        }
        latencies = sorted(latency for _, latency in rows if latency is not None)
        if latencies:
            metrics["latency_mean_s"] = sum(latencies) / len(latencies)
            metrics["latency_p50_s"] = _percentile(latencies, 50)
            metrics["latency_p95_s"] = _percentile(latencies, 95)
        return metrics

    def close(self) -> None:
        self._db.close()
