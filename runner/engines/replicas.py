"""Data parallelism: N independent engine replicas, one per GPU (or per CPU core), sharing the requests.

Why separate processes: vLLM's own data-parallel mode (`LLM(data_parallel_size=N)`) is refused for
single-process (offline) use, and its offline data-parallel recipe is for mixture-of-experts models only
("not supported/useful for dense models"). So each replica is a spawned process holding an ordinary
engine on its own device (`CUDA_VISIBLE_DEVICES=<its GPUs' UUIDs>`, or one CPU core on the CPU build).

How the requests are shared (`ReplicatedEngine._dispatch`):
  - Work is pulled, not pre-assigned. The parent cuts the call's requests into contiguous chunks and
    hands the next chunk to whichever replica reports its last one done, so a replica that got slow
    requests (the bridge sorts prompts longest first) or a slower device simply takes fewer chunks.
  - Chunk sizes shrink as the work runs out (`chunk_size`, "factoring" self-scheduling): big chunks
    first, because every engine call ends in a tail where its last sequences finish with the batch
    mostly empty, and few large calls keep vLLM's continuous batching full (a 250-request call's first
    chunk is 63 requests, for the 64 sequence slots of the default engine settings); small chunks last,
    because the last chunk decides how long one replica runs after the others went idle.
  - A replica holds one chunk at a time. An engine call cannot take requests once it runs, so a second
    chunk sent ahead would only wait in the pipe until the call ends, and it would be a chunk that an
    idle replica could no longer take; what sending it ahead saves is one pipe round trip between engine
    calls that last seconds (measured: 0.3 ms, or 7 ms with 64 prompts of 300 tokens and their answers).
  - Answers stream: inside the replica, the engine's `on_result` sends ("result", index, value) over the
    pipe at once and the parent calls the caller's `on_result` as each arrives, so the response cache
    holds every answer finished before a crash, whichever replica produced it.
  - Per-replica busy time (inside engine calls) and request counts go to `stats.extra`
    (`replica_<i>_busy_s`, `replica_<i>_requests`, `replica_busy_max_over_mean`): the balance is in MLflow.

Failure and teardown: a replica that dies or reports an error fails the call, naming the replica, after
the answers it sent before are delivered; the other replicas are then stopped (terminate, then kill), as
they hold work of a call that has failed. Normal shutdown is bounded too: each replica shuts its engine
down and exits; one that does not within `shutdown_timeout_s` is terminated, then killed. Replicas are
daemon processes and exit on their own when the runner is killed (their parent changes), so none is
left behind.

CPU build: each replica is pinned to its own share of the allowed cores and starts with one OpenMP thread
per core. Without that, every replica's OpenMP team is sized for the whole machine and the teams spin
against each other (128 requests x 64 tokens, 2 replicas on 2 cores: 72 output tok/s unbound vs 217
pinned). Even pinned, 2 replicas on this project's 2-core machine are slower than one engine (the default
job: 148.5 vs 182.9 output tok/s, bench/data_parallel.py), so selection never picks replicas on the CPU and
warns when they are asked for (runner/engines/selection.py).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from runner.engines.base import Completion, Engine, LogLikelihood, OnResult, SamplingSettings

if TYPE_CHECKING:
    from runner.config.schema import ModelConfig
    from runner.engines.selection import Selection

log = logging.getLogger(__name__)


class ReplicaBuild(TypedDict):
    """What each replica builds its engine from, pickled to its process: plain data, no config objects."""

    selection: Selection  # the selection of one replica
    source: str  # the model's folder or hub id
    model: dict[str, Any]  # the job's model config, as runner.config.resolvers.to_dict gives it
    engine: dict[str, Any]  # the job's engine config node, `+engine.<name>` keys included
    devices: NotRequired[tuple[str, ...]]  # the GPUs of all the replicas, as CUDA_VISIBLE_DEVICES names them
    factory: NotRequired[str]  # tests: "module:callable" building a replica's engine from (build, replica)


# Smallest chunk handed out while there is enough work left for every replica to get one this size.
# Below ~16 sequences an engine call is mostly ramp-up and tail (vLLM's CPU build runs 46-50 tok/s
# on one sequence vs 166-228 batched); the chunks before the last few are far larger anyway.
MIN_CHUNK = 16


def chunk_size(remaining: int, replicas: int) -> int:
    """The next chunk's size: half a replica's even share of what is left, but at least MIN_CHUNK unless
    that would leave another replica without work.

    Half of remaining/replicas ("factoring" self-scheduling) keeps every chunk small enough that the
    replicas still running when it ends have as much left to do, so they finish close together, while
    the first chunks are large (a quarter of the call for two replicas): few engine calls, each one a
    long run of continuous batching with one tail at its end.
    """
    if remaining <= 0:
        return 0
    share = math.ceil(remaining / replicas)
    return min(remaining, max(min(MIN_CHUNK, share), math.ceil(share / 2)))


def _watch_parent(parent: int) -> None:
    """Exit when the runner is gone (kill -9 leaves no one to send "stop"): a replica never outlives it."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _build(build: ReplicaBuild, replica: int) -> Engine:
    """The replica's own engine. `build["factory"]` ("module:callable", called with (build, replica))
    replaces the real one where a test needs an engine of its own."""
    factory = build.get("factory")
    if factory:
        import importlib

        module, _, name = factory.partition(":")
        make = cast("Callable[[ReplicaBuild, int], Engine]", getattr(importlib.import_module(module), name))
        return make(build, replica)

    from omegaconf import OmegaConf

    from runner.engines.load import engine_fields, load_engine

    # The config nodes the parent had, rebuilt from their plain form (the engine's extra keys included); a
    # node with ModelConfig's keys reads by attribute as the dataclass does.
    model = cast("ModelConfig", OmegaConf.create(build["model"]))
    engine = engine_fields(OmegaConf.create(build["engine"]))
    return load_engine(build["selection"], build["source"], model, engine)


def _serve(conn: Connection, build: ReplicaBuild, replica: int, env: dict[str, str], cpus: list[int] | None) -> None:
    """A replica's main loop (in its own process): build the engine, then run chunks until told to stop."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    os.environ.update(env)
    if build["selection"].kind == "cpu":
        # The engine's CPU environment (an in-process engine core: no extra processes competing for the
        # cores), as the runner's own engine gets it; the user's environment still wins.
        for key, value in (build["engine"].get("cpu_env") or {}).items():
            os.environ.setdefault(str(key), str(value))
    if cpus:
        # vLLM's in-process (`uni`) CPU engine ignores VLLM_CPU_OMP_THREADS_BIND (only its multiprocess
        # executor reads it): pin the whole replica, so its torch threads stay on its own core.
        os.sched_setaffinity(0, cpus)
    engine = None
    try:
        engine = _build(build, replica)
        conn.send(("ready", engine.stats.load_seconds, dict(engine.stats.extra)))
        while True:
            command, chunk = conn.recv()
            if command == "stop":
                break
            offset, items, settings = chunk

            def send(index: int, value: Any, offset: int = offset) -> None:
                conn.send(("result", offset + index, value))  # at once: the parent saves it to the cache

            start = time.perf_counter()
            if command == "generate":
                engine.generate(items, settings, on_result=send)
            else:
                engine.loglikelihood(items, on_result=send)
            conn.send(("done", time.perf_counter() - start, None))
    except BaseException:  # noqa: BLE001 - whatever it was, the parent must hear it instead of hanging
        try:
            conn.send(("error", traceback.format_exc(), None))
        except OSError:
            pass
    finally:
        if engine is not None:
            engine.shutdown()
        conn.close()


def replica_cpus(replica: int, replicas: int, allowed: list[int] | None = None) -> list[int]:
    """The CPU cores replica `replica` of `replicas` runs on: its own even, contiguous share of the cores
    this process may use (its affinity mask, as `taskset` or a batch scheduler set it); one core each
    when there are as many replicas as cores, shared round-robin when there are more."""
    allowed = sorted(os.sched_getaffinity(0)) if allowed is None else allowed
    share = len(allowed) // replicas
    if share == 0:
        return [allowed[replica % len(allowed)]]
    return allowed[replica * share : (replica + 1) * share]


def device_env(
    kind: str, replica: int, gpus_per_replica: int = 1, devices: tuple[str, ...] = (), replicas: int = 1
) -> dict[str, str]:
    """What pins a replica to its own devices: its own GPUs, or its own CPU cores on vLLM's CPU build.

    `devices` are the selection's GPUs as CUDA_VISIBLE_DEVICES names them (UUIDs from NVML): replica r
    gets the r-th run of `gpus_per_replica` of them, so replicas stay within the user's own mask. On the
    CPU build, VLLM_CPU_OMP_THREADS_BIND binds the workers of a replica that runs vLLM's multiprocess
    executor; the in-process engine (the default) ignores it and is pinned by `_serve` instead.
    """
    if kind == "cpu" or gpus_per_replica == 0:
        cores = replica_cpus(replica, replicas) if hasattr(os, "sched_getaffinity") else [replica]
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)), "CUDA_VISIBLE_DEVICES": ""}
    first = replica * gpus_per_replica
    mine = devices[first : first + gpus_per_replica]
    if len(mine) < gpus_per_replica:
        raise ValueError(f"replica {replica} needs {gpus_per_replica} GPU(s); the selection lists {list(devices)}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment while a replica is spawned (it inherits them at exec)."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ReplicaError(RuntimeError):
    """A replica failed or died; the call fails and the replicas are stopped."""


class ReplicatedEngine(Engine):
    name = "replicas"

    def __init__(
        self,
        build: ReplicaBuild,
        replicas: int,
        *,
        tokenizer_source: str,
        start_timeout_s: float = 1800,
        shutdown_timeout_s: float = 60,
        cpu_binding: str = "core",
    ) -> None:
        """`cpu_binding` (CPU replicas only): "core" pins each replica to its share of the cores with as many
        OpenMP threads; "threads" sets the threads but lets the OS place the replicas; "none" leaves both to
        vLLM and the OS (each replica then starts an OpenMP team sized for the whole machine)."""
        super().__init__()
        if cpu_binding not in ("core", "threads", "none"):
            raise ValueError(f"cpu_binding={cpu_binding!r} is not one of core, threads, none")
        self._tokenizer_source = tokenizer_source
        self._tokenizer: Any = None
        self.shutdown_timeout_s = shutdown_timeout_s
        self._failed: str | None = None
        self._workers: list[tuple[SpawnProcess, Connection]] = []
        start = time.perf_counter()
        try:
            self._start_replicas(build, replicas, cpu_binding)
            self._await_ready(start_timeout_s)
        except BaseException:
            self.shutdown()
            raise
        self.stats.load_seconds = time.perf_counter() - start
        self.stats.extra["data_parallel_replicas"] = float(replicas)
        # Each replica has its own KV cache: the job can hold this many times the tokens and sequences.
        for key in ("kv_cache_tokens", "max_concurrency"):
            if key in self.stats.extra:
                self.stats.extra[key] *= replicas
        self._busy = [0.0] * replicas
        self._requests = [0] * replicas
        self._counted_in = self.stats
        log.info("%d engine replicas loaded in %.1f s", replicas, self.stats.load_seconds)

    def _start_replicas(self, build: ReplicaBuild, replicas: int, cpu_binding: str) -> None:
        """Spawn the replica processes, each pinned to its own devices; they load their engines meanwhile."""
        context = multiprocessing.get_context("spawn")  # forking a process that holds threads (or CUDA) is unsafe
        selection = build["selection"]
        per_replica = selection.gpus  # the selection of one replica
        devices = tuple(build.get("devices") or ())
        on_cpu = (selection.kind == "cpu" or per_replica == 0) and hasattr(os, "sched_setaffinity")
        for replica in range(replicas):
            parent, child = context.Pipe()
            cores = replica_cpus(replica, replicas) if on_cpu else []
            threads = {"OMP_NUM_THREADS": str(len(cores))} if cores and cpu_binding != "none" else {}
            process = context.Process(
                target=_serve,
                args=(
                    child,
                    build,
                    replica,
                    device_env(selection.kind, replica, per_replica, devices, replicas),
                    cores if cpu_binding == "core" else None,
                ),
                daemon=True,
                name=f"replica-{replica}",
            )
            # OpenMP sizes its thread team when the replica's interpreter starts (vLLM's CPU build preloads
            # libgomp), from the cores it may use then: the whole machine, and pinning later does not shrink
            # it. Two threads on a replica's one core then wait on each other at every barrier (seen in
            # gomp_barrier_wait_end; 72 instead of 217 output tok/s for two replicas, see above).
            with _environment(threads):
                process.start()
            child.close()
            self._workers.append((process, parent))

    def _await_ready(self, start_timeout_s: float) -> None:
        """Wait for every replica's engine to load; its load-time measurements join this engine's."""
        for replica, (_, conn) in enumerate(self._workers):
            if not conn.poll(start_timeout_s):
                raise RuntimeError(f"engine replica {replica} did not load within {start_timeout_s:.0f} s")
            status, value, extra = self._receive(replica)
            if status != "ready":
                raise RuntimeError(f"engine replica {replica} failed to load:\n{value}")
            self.stats.extra.update(extra)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from runner.engines.lazy import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer_source)
        return self._tokenizer

    def _receive(self, replica: int) -> tuple[str, Any, Any]:
        """A replica's next message: (status, value, extra), as `_serve` sends them."""
        try:
            message: tuple[str, Any, Any] = self._workers[replica][1].recv()
        except (EOFError, OSError):  # the process died without a word (killed, segfault, out of memory)
            return ("error", self._exited(replica), None)
        return message

    def _exited(self, replica: int) -> str:
        process = self._workers[replica][0]
        process.join(5)
        code = process.exitcode
        how = "" if code is None else f" (killed by signal {-code})" if code < 0 else f" (exit code {code})"
        return f"engine replica {replica} exited unexpectedly{how}"

    def _dispatch(
        self, command: str, items: Sequence[Any], settings: list[SamplingSettings] | None, on_result: OnResult
    ) -> list[Any]:
        """Run one call's requests on the replicas, pulled chunk by chunk; results come back in request order
        (the answers each replica's engine sent back through its pipe)."""
        if self._failed:
            raise ReplicaError(f"the engine replicas were stopped after an earlier failure: {self._failed}")
        if self.stats is not self._counted_in:  # a new job's stats (LazyEngine.reset_stats): count afresh
            self._busy = [0.0] * len(self._busy)
            self._requests = [0] * len(self._requests)
            self._counted_in = self.stats
        call = _Call(self, command, items, settings, on_result)
        try:
            call.run()
        except BaseException as exc:
            # Whatever stopped this call (a replica's failure, the caller's on_result, Ctrl-C), the other
            # replicas are still busy with its chunks: stop them rather than deliver stale answers later.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self._failed = self._failed or first
            self._stop_all(grace_s=2, expected=True)
            raise
        finally:
            self._record_balance()
        if not all(call.answered):
            raise ReplicaError(f"the engine replicas answered {sum(call.answered)} of {len(items)} requests")
        return call.results

    def _record_balance(self) -> None:
        """Per-replica busy time and requests of this job so far, and how even they are (1.0: perfectly)."""
        extra = self.stats.extra
        for replica, (busy, requests) in enumerate(zip(self._busy, self._requests, strict=True)):
            extra[f"replica_{replica}_busy_s"] = busy
            extra[f"replica_{replica}_requests"] = float(requests)
        mean = sum(self._busy) / len(self._busy) if self._busy else 0.0
        if mean > 0:
            extra["replica_busy_max_over_mean"] = max(self._busy) / mean

    def _generate(
        self, prompts: list[list[int]], settings: list[SamplingSettings], on_result: OnResult
    ) -> list[Completion]:
        return self._dispatch("generate", prompts, settings, on_result)

    def _loglikelihood(self, requests: list[tuple[list[int], list[int]]], on_result: OnResult) -> list[LogLikelihood]:
        return self._dispatch("loglikelihood", requests, None, on_result)

    def _stop_all(self, grace_s: float, expected: bool = False) -> None:
        """Ask every replica to stop; terminate, then kill, whichever has not exited after `grace_s`
        (`expected`: after a failed call, when a replica still busy with its chunk cannot stop in time)."""
        workers, self._workers = self._workers, []
        for _, conn in workers:
            try:
                conn.send(("stop", None))
            except OSError:  # already gone
                pass
        deadline = time.monotonic() + grace_s
        for process, conn in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                if not expected:
                    log.warning("engine replica %s did not stop in time; terminating it", process.name)
                process.terminate()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
            conn.close()

    def shutdown(self) -> None:
        self._stop_all(self.shutdown_timeout_s)


class _Call:
    """One engine call shared out over the replicas (`ReplicatedEngine._dispatch`): which requests went to
    which replica, and the answers as they come back."""

    def __init__(
        self,
        engine: ReplicatedEngine,
        command: str,
        items: Sequence[Any],
        settings: list[SamplingSettings] | None,
        on_result: OnResult,
    ) -> None:
        self.engine = engine
        self.command = command  # "generate" or "loglikelihood", as `_serve` runs it
        self.items = items
        self.settings = settings
        self.on_result = on_result
        self.results: list[Any] = [None] * len(items)
        self.answered = [False] * len(items)
        self.handed = 0  # items[:handed] went to a replica
        self.running: set[int] = set()  # replicas working on a chunk

    def run(self) -> None:
        """Hand every replica a chunk, then take their messages until every chunk is done."""
        workers = self.engine._workers
        for replica in range(len(workers)):
            self.hand_out(replica)
        owner: dict[object, int] = {}
        for replica, (process, conn) in enumerate(workers):
            owner[conn] = owner[process.sentinel] = replica
        while self.running:
            # The pipes, and the processes themselves: a replica's pipe may stay open after it died when
            # a process it started (vLLM's engine core on a GPU) inherited it.
            watched = [w for r in self.running for w in (workers[r][1], workers[r][0].sentinel)]
            for ready in wait(watched):
                replica = owner[ready]
                conn = workers[replica][1]
                if ready is conn:
                    if replica in self.running:
                        self.take(replica)
                    continue
                while replica in self.running and conn.poll(0):  # what it sent before it died still counts
                    self.take(replica)
                if replica in self.running:
                    raise ReplicaError(self.engine._exited(replica))

    def hand_out(self, replica: int) -> None:
        """The next chunk to `replica`, if any is left."""
        size = chunk_size(len(self.items) - self.handed, len(self.engine._workers))
        if not size:
            return
        start, self.handed = self.handed, self.handed + size
        settings = self.settings[start : self.handed] if self.settings is not None else None
        chunk = (start, self.items[start : self.handed], settings)
        try:
            self.engine._workers[replica][1].send((self.command, chunk))
        except OSError:  # it died while idle, between calls
            raise ReplicaError(self.engine._exited(replica)) from None
        self.running.add(replica)
        self.engine._requests[replica] += size

    def take(self, replica: int) -> None:
        """One message from `replica`: an answer, its chunk done, or its failure."""
        status, value, extra = self.engine._receive(replica)
        if status == "result":  # (index, answer): to the caller (the response cache) at once
            self.results[value], self.answered[value] = extra, True
            self.on_result(value, extra)
        elif status == "done":  # (busy seconds): pulled, the first replica done gets the next chunk
            self.engine._busy[replica] += value
            self.running.discard(replica)
            self.hand_out(replica)
        elif value.startswith(f"engine replica {replica} exited"):
            raise ReplicaError(value)
        else:
            raise ReplicaError(f"engine replica {replica} failed:\n{value}")
