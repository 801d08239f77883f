"""Data parallelism: N independent engine replicas, one per GPU (or per CPU core), sharing the requests.

vLLM's own data-parallel mode is refused for single-process (offline) use of dense models, so each
replica is a separate spawned process holding an ordinary engine on its own device
(`CUDA_VISIBLE_DEVICES=<its GPUs' UUIDs>`, or `VLLM_CPU_OMP_THREADS_BIND=<i>` on the CPU build). A batch is cut into
N contiguous shards, every replica gets its shard at once, and the answers are put back in request
order, so the result is the one a single engine gives.

Teardown is explicit and bounded: each replica shuts its engine down and exits; one that does not
answer within `shutdown_timeout_s` is terminated, then killed. Replicas are daemon processes, so they
never outlive the runner.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from typing import Any

from runner.engines.base import Completion, Engine, LogLikelihood, OnResult, SamplingSettings

log = logging.getLogger(__name__)


def _serve(conn: Any, build: dict[str, Any], env: dict[str, str]) -> None:
    """A replica's main loop (in its own process): build the engine, then answer requests until told to stop."""
    os.environ.update(env)
    engine = None
    try:
        from omegaconf import OmegaConf

        from runner.engines import build_engine

        engine = build_engine(
            build["selection"], build["source"], OmegaConf.create(build["model"]), OmegaConf.create(build["engine"])
        )
        conn.send(("ready", engine.stats.load_seconds, dict(engine.stats.extra)))
        while True:
            command, payload = conn.recv()
            if command == "stop":
                break
            # Completions carry their own latency, so the parent's counters see every request.
            result = engine.generate(*payload) if command == "generate" else engine.loglikelihood(payload)
            conn.send(("ok", result, None))
    except BaseException:  # noqa: BLE001 - whatever it was, the parent must hear it instead of hanging
        try:
            conn.send(("error", traceback.format_exc(), None))
        except OSError:
            pass
    finally:
        if engine is not None:
            engine.shutdown()
        conn.close()


def device_env(kind: str, replica: int, gpus_per_replica: int = 1, devices: tuple[str, ...] = ()) -> dict[str, str]:
    """What pins a replica to its own devices: its own GPUs, or its own CPU core on vLLM's CPU build.

    `devices` are the selection's GPUs as CUDA_VISIBLE_DEVICES names them (UUIDs from NVML): replica r
    gets the r-th run of `gpus_per_replica` of them, so replicas stay within the user's own mask.
    """
    if kind == "cpu" or gpus_per_replica == 0:
        return {"VLLM_CPU_OMP_THREADS_BIND": str(replica), "CUDA_VISIBLE_DEVICES": ""}
    first = replica * gpus_per_replica
    mine = devices[first : first + gpus_per_replica]
    if len(mine) < gpus_per_replica:
        raise ValueError(f"replica {replica} needs {gpus_per_replica} GPU(s); the selection lists {list(devices)}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}


def shard(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous, near-equal slices of range(n) (empty slices at the end)."""
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def _receive(conn: Any, replica: int) -> tuple:
    try:
        return conn.recv()
    except EOFError:  # the process died without a word (killed, segfault, out of memory)
        return ("error", f"engine replica {replica} exited unexpectedly", None)


class ReplicatedEngine(Engine):
    name = "replicas"

    def __init__(
        self,
        build: dict[str, Any],
        replicas: int,
        *,
        tokenizer_source: str,
        start_timeout_s: float = 1800,
        shutdown_timeout_s: float = 60,
    ) -> None:
        super().__init__()
        self._tokenizer_source = tokenizer_source
        self._tokenizer = None
        self.shutdown_timeout_s = shutdown_timeout_s
        context = multiprocessing.get_context("spawn")  # forking a process that holds threads (or CUDA) is unsafe
        self._workers: list[tuple[Any, Any]] = []
        start = time.perf_counter()
        selection = build["selection"]
        per_replica = selection.gpus  # the selection of one replica
        devices = tuple(build.get("devices") or ())
        try:
            for replica in range(replicas):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_serve,
                    args=(child, build, device_env(selection.kind, replica, per_replica, devices)),
                    daemon=True,
                    name=f"replica-{replica}",
                )
                process.start()
                child.close()
                self._workers.append((process, parent))
            for replica, (_, conn) in enumerate(self._workers):
                if not conn.poll(start_timeout_s):
                    raise RuntimeError(f"engine replica {replica} did not load within {start_timeout_s:.0f} s")
                status, value, extra = _receive(conn, replica)
                if status != "ready":
                    raise RuntimeError(f"engine replica {replica} failed to load:\n{value}")
                self.stats.extra.update(extra)
        except BaseException:
            self.shutdown()
            raise
        self.stats.load_seconds = time.perf_counter() - start
        self.stats.extra["data_parallel_replicas"] = float(replicas)
        # Each replica has its own KV cache: the job can hold this many times the tokens and sequences.
        for key in ("kv_cache_tokens", "max_concurrency"):
            if key in self.stats.extra:
                self.stats.extra[key] *= replicas
        log.info("%d engine replicas loaded in %.1f s", replicas, self.stats.load_seconds)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from runner.engines.lazy import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer_source)
        return self._tokenizer

    def _scatter(self, command: str, items: list, extra: Any = None) -> list:
        bounds = shard(len(items), len(self._workers))
        busy = []
        for (start, end), (_, conn) in zip(bounds, self._workers, strict=True):
            if end > start:
                conn.send((command, (items[start:end], extra) if command == "generate" else items[start:end]))
                busy.append(conn)
        merged: list = []
        for replica, conn in enumerate(busy):  # shards are contiguous: concatenating restores request order
            status, value, _ = _receive(conn, replica)
            if status != "ok":
                raise RuntimeError(f"engine replica {replica} failed:\n{value}")
            merged.extend(value)
        return merged

    # Results are reported when every shard is back (Engine.generate calls on_result then).
    def _generate(self, prompts: list[list[int]], settings: SamplingSettings, on_result: OnResult) -> list[Completion]:
        return self._scatter("generate", prompts, settings)

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        return self._scatter("loglikelihood", requests)

    def shutdown(self) -> None:
        workers, self._workers = self._workers, []
        for _, conn in workers:
            try:
                conn.send(("stop", None))
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + self.shutdown_timeout_s
        for process, conn in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("engine replica %s did not stop in time; terminating it", process.name)
                process.terminate()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
            conn.close()
