"""Data-parallel engine replicas (runner/engines/replicas.py): the single engine's answers, in request order,
streamed to the caller as they finish, with work pulled by whichever replica is free; a replica that
fails or dies fails the call and leaves no process; a job killed with kill -9 resumes from the cache.

Most tests run replicas of `FakeEngine` (this module, named in the build dict: each replica imports it),
where the scheduling is what is tested; one runs real vLLM replicas of a tiny random checkpoint, and one
a real job through the CLI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHORT_ANSWERS, LiveCli, cached_answers, run_cli
from test_parallel import tiny_checkpoint  # noqa: F401 - the fixture: a tiny random Llama checkpoint

from runner.config.resolvers import PROJECT_ROOT
from runner.engines.base import Completion, Engine, LogLikelihood, SamplingSettings
from runner.engines.replicas import MIN_CHUNK, ReplicaError, ReplicatedEngine, chunk_size, device_env, replica_cpus
from runner.engines.selection import Selection

# --- a fake engine, built inside each replica process ----------------------------------------------------

WAIT = -1  # a prompt [WAIT] is answered only once the gate file exists (or after GATE_TIMEOUT_S)
DIE = -9  # a prompt [DIE] kills its replica with SIGKILL, as the OOM killer would
FAIL = -7  # a prompt [FAIL] raises in the engine
GATE_TIMEOUT_S = 30  # bounds a hang only: a replica waits at most this long for the gate, over all its requests


class FakeEngine(Engine):
    """Answers prompt p with settings s as text "p|s.max_tokens|<replica>|...|open", one request at a time,
    calling on_result as each is done. A replica listed in build["held"] answers each request only once the
    gate file build["gate"] exists: a replica as slow as the test wants, stuck until the test lets it go."""

    name = "fake"

    def __init__(self, build: dict, replica: int) -> None:
        super().__init__()
        self.replica = replica
        self.gate = build.get("gate")
        self.held = replica in build.get("held", ())
        self._gate_deadline: float | None = None
        self.stats.extra["kv_cache_tokens"] = 100.0
        # What the replica's process was given: its core and the engine's CPU environment.
        self.cpus = sorted(os.sched_getaffinity(0))
        self.env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.threads = os.environ.get("OMP_NUM_THREADS")

    @property
    def tokenizer(self):
        return None

    def _gated(self, prompt: list[int]) -> bool:
        return self.held or prompt == [WAIT]

    def _answer(self, prompt: list[int]) -> None:
        if prompt == [DIE]:
            os.kill(os.getpid(), signal.SIGKILL)
        if prompt == [FAIL]:
            raise ValueError("the fake engine refuses this request")
        if self._gated(prompt):  # the gate is a file: the test, in another process, opens it
            if self._gate_deadline is None:
                self._gate_deadline = time.monotonic() + GATE_TIMEOUT_S
            while not Path(self.gate).exists() and time.monotonic() < self._gate_deadline:
                time.sleep(0.01)

    def _generate(self, prompts, settings, on_result):
        out = []
        for index, (prompt, each) in enumerate(zip(prompts, settings, strict=True)):
            self._answer(prompt)
            gated = "open" if not self._gated(prompt) or Path(self.gate).exists() else "timed out"
            text = f"{prompt[0]}|{each.max_tokens}|{self.replica}|{self.cpus}|{self.env}|{self.threads}|{gated}"
            out.append(Completion(text, len(prompt), 1, "stop"))
            on_result(index, out[-1])
        return out

    def _loglikelihood(self, requests, on_result):
        out = []
        for index, (context, continuation) in enumerate(requests):
            self._answer(context)
            out.append(LogLikelihood(float(sum(context) + sum(continuation)), True))
            on_result(index, out[-1])
        return out


def fake_replicas(n: int = 2, **build) -> ReplicatedEngine:
    engine_cfg = {"cpu_env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}}
    spec = {"selection": Selection("cpu", "test"), "engine": engine_cfg, "factory": f"{__name__}:FakeEngine", **build}
    return ReplicatedEngine(spec, n, tokenizer_source="unused", shutdown_timeout_s=10)


@pytest.fixture
def no_process_left():
    yield
    assert multiprocessing.active_children() == []  # every replica was joined: nothing keeps running


# --- scheduling -----------------------------------------------------------------------------------------


def test_chunks_cover_the_call_large_first_small_last():
    for n, replicas in ((250, 2), (2500, 2), (37, 4), (5, 2), (1, 3)):
        sizes, left = [], n
        while left:
            sizes.append(chunk_size(left, replicas))
            left -= sizes[-1]
        assert sum(sizes) == n and all(s > 0 for s in sizes)
        assert sizes == sorted(sizes, reverse=True)  # the tail of the call is cut finest
        # No chunk is more than half a replica's share of what was left, nor too small to batch,
        # unless fewer than MIN_CHUNK per replica remained.
        left = n
        for size in sizes:
            assert size <= max(MIN_CHUNK, -(-left // replicas) // 2 + 1)
            assert size >= min(MIN_CHUNK, -(-left // replicas))
            left -= size
    assert chunk_size(250, 2) == 63  # the first chunk of the default job: a quarter of it


def test_each_replica_gets_its_own_share_of_the_allowed_cores():
    assert [replica_cpus(r, 2, [0, 1]) for r in range(2)] == [[0], [1]]
    assert [replica_cpus(r, 2, [4, 5, 6, 7, 8]) for r in range(2)] == [[4, 5], [6, 7]]
    assert [replica_cpus(r, 3, [2, 3]) for r in range(3)] == [[2], [3], [2]]  # more replicas than cores
    assert device_env("cpu", 1, 0, (), 2)["VLLM_CPU_OMP_THREADS_BIND"] == str(replica_cpus(1, 2)[0])


def test_replicas_answer_in_request_order_with_each_requests_settings(no_process_left):
    threads_before = os.environ.get("OMP_NUM_THREADS")
    engine = fake_replicas(2)
    try:
        prompts = [[i] for i in range(100)]
        settings = [SamplingSettings(max_tokens=8 + i % 3) for i in range(100)]
        seen: dict[int, str] = {}
        got = engine.generate(prompts, settings, on_result=lambda i, c: seen.setdefault(i, c.text))
        texts = [c.text.split("|") for c in got]
        assert [(int(t[0]), int(t[1])) for t in texts] == [(i, 8 + i % 3) for i in range(100)]
        assert {t[2] for t in texts} == {"0", "1"}  # both replicas worked
        assert seen == {i: c.text for i, c in enumerate(got)}  # every answer reported exactly once
        # Each replica runs on its own cores (half of this process's) with one OpenMP thread per core, and
        # with the engine's CPU environment (an in-process engine core: VLLM_ENABLE_V1_MULTIPROCESSING=0).
        allowed = sorted(os.sched_getaffinity(0))
        mine = {r: replica_cpus(r, 2, allowed) for r in (0, 1)}
        assert {t[2]: t[3] for t in texts} == {str(r): str(cores) for r, cores in mine.items()}
        assert {t[2]: t[5] for t in texts} == {str(r): str(len(cores)) for r, cores in mine.items()}
        assert {t[4] for t in texts} == {"0"}
        assert os.environ.get("OMP_NUM_THREADS") == threads_before  # set for the replicas only
        # Log-likelihoods go the same way.
        scores = engine.loglikelihood([([i], [1, 2]) for i in range(30)])
        assert [s.logprob for s in scores] == [float(i + 3) for i in range(30)]
        extra = engine.stats.extra
        assert extra["data_parallel_replicas"] == 2.0 and extra["kv_cache_tokens"] == 200.0
        assert extra["replica_0_requests"] + extra["replica_1_requests"] == 130
    finally:
        engine.shutdown()


def test_answers_reach_on_result_while_the_call_still_runs(tmp_path, no_process_left):
    """The last request waits until the caller has seen every other answer: it completes only if the
    answers are streamed to on_result as they finish, not handed over when the call returns."""
    gate = tmp_path / "gate"
    engine = fake_replicas(2, gate=str(gate))
    try:
        prompts = [[i] for i in range(40)] + [[WAIT]]
        seen: list[int] = []

        def on_result(index: int, completion) -> None:
            seen.append(index)
            if len(seen) == len(prompts) - 1:
                gate.touch()  # the caller saw 40 answers while the 41st was still being computed

        got = engine.generate(prompts, SamplingSettings(), on_result=on_result)
        assert got[-1].text.endswith("|open"), "the call waited for the gate: answers were not streamed"
        assert sorted(seen) == list(range(len(prompts))) and seen[-1] == len(prompts) - 1
    finally:
        engine.shutdown()


def test_the_faster_replica_pulls_more_of_the_work(tmp_path, no_process_left):
    """Work is pulled, not pre-assigned. Replica 1 is stuck on its first chunk until the caller has every other
    answer, which replica 0 can give only by pulling chunk after chunk while replica 1 is busy. Contiguous
    halves would leave 100 requests with the stuck replica: the gate would never open (replica 0 alone could
    answer only its 100), the call would wait out GATE_TIMEOUT_S, and the stuck answers would say "timed out"."""
    gate = tmp_path / "gate"
    engine = fake_replicas(2, gate=str(gate), held=[1])
    n = 200
    # The first chunks go out in replica order: replica 0's, then the one replica 1 is stuck on.
    stuck = chunk_size(n - chunk_size(n, 2), 2)
    try:
        seen: list[int] = []

        def on_result(index: int, completion) -> None:
            seen.append(index)
            if len(seen) == n - stuck:
                gate.touch()  # replica 0 answered everything but replica 1's chunk: let replica 1 go

        got = engine.generate([[i] for i in range(n)], SamplingSettings(), on_result=on_result)
        texts = [c.text.split("|") for c in got]
        assert [int(t[0]) for t in texts] == list(range(n))
        assert all(t[6] == "open" for t in texts), "replica 1 waited out the gate: the work was not pulled"
        extra = engine.stats.extra
        assert (extra["replica_0_requests"], extra["replica_1_requests"]) == (n - stuck, stuck), extra
        assert sum(t[2] == "1" for t in texts) == stuck and sorted(seen) == list(range(n))
        assert extra["replica_1_busy_s"] > 0 and extra["replica_busy_max_over_mean"] >= 1.0
    finally:
        engine.shutdown()


def test_busy_time_and_requests_are_counted_per_job():
    """A sweep's next job starts new stats (LazyEngine.reset_stats keeps `extra`): the per-replica counts
    start over instead of adding up over the jobs."""
    from runner.engines.base import EngineStats

    engine = fake_replicas(2)
    try:
        engine.generate([[i] for i in range(40)], SamplingSettings())
        assert engine.stats.extra["replica_0_requests"] + engine.stats.extra["replica_1_requests"] == 40
        engine.stats = EngineStats(extra=dict(engine.stats.extra))
        engine.generate([[i] for i in range(10)], SamplingSettings())
        assert engine.stats.extra["replica_0_requests"] + engine.stats.extra["replica_1_requests"] == 10
    finally:
        engine.shutdown()


# --- failures -------------------------------------------------------------------------------------------


def test_a_replica_killed_mid_call_fails_the_call_naming_it_and_leaves_no_process(tmp_path, no_process_left):
    # Replica 1 is stuck in its chunk (its gate never opens): it is still busy when replica 0 dies.
    engine = fake_replicas(2, gate=str(tmp_path / "never"), held=[1])
    seen: list[int] = []
    prompts = [[i] for i in range(60)]
    prompts[5] = [DIE]  # in replica 0's first chunk (requests 0-15), after it answered 0-4
    with pytest.raises(ReplicaError, match=r"engine replica 0 exited unexpectedly \(killed by signal 9\)"):
        engine.generate(prompts, SamplingSettings(), on_result=lambda i, c: seen.append(i))
    assert set(range(5)) <= set(seen)  # what replica 0 sent before it died still reached the caller
    assert len(seen) < len(prompts)
    # The other replica, busy, was stopped with it; the engine says why instead of hanging on a later call.
    assert multiprocessing.active_children() == []
    with pytest.raises(ReplicaError, match="stopped after an earlier failure"):
        engine.generate([[1]], SamplingSettings())
    engine.shutdown()


def test_a_replica_killed_between_calls_fails_the_next_call_naming_it(no_process_left):
    engine = fake_replicas(2)
    engine.generate([[i] for i in range(4)], SamplingSettings())
    process = engine._workers[1][0]
    process.kill()
    process.join()
    with pytest.raises(ReplicaError, match=r"engine replica 1 exited unexpectedly \(killed by signal 9\)"):
        engine.generate([[i] for i in range(40)], SamplingSettings())
    engine.shutdown()


def test_a_replica_whose_engine_raises_fails_the_call_with_its_traceback(no_process_left):
    engine = fake_replicas(2)
    prompts = [[i] for i in range(40)]
    prompts[-1] = [FAIL]
    with pytest.raises(ReplicaError, match=r"(?s)engine replica \d failed:.*ValueError: the fake engine refuses"):
        engine.generate(prompts, SamplingSettings())
    engine.shutdown()


# --- engine selection on the CPU ------------------------------------------------------------------------


def test_cpu_selection_never_chooses_replicas_and_warns_when_asked_for_them(compose_cfg):
    from runner.engines.selection import CPU_REPLICAS_MEASURED, select_engine
    from runner.job.plan import build_plan, plan_model, render_plan
    from runner.machine.hardware import Hardware

    cpu_box = Hardware(gpus=(), host_memory_bytes=24 * 1024**3, cpu_count=64)
    for kind in ("auto", "cpu", "hf"):  # even with 64 cores, one engine unless asked
        cfg = compose_cfg(f"engine.kind={kind}")
        selection = select_engine(cfg.engine, cfg.model, cpu_box)
        assert (selection.data_parallel_size, selection.warnings) == (1, ())

    cfg = compose_cfg("engine.data_parallel_size=2")
    selection = select_engine(cfg.engine, cfg.model, cpu_box)
    assert (selection.kind, selection.data_parallel_size) == ("cpu", 2)  # runs as asked
    (warning,) = selection.warnings  # logged by the job, shown by the plan
    assert warning.startswith("engine.data_parallel_size=2 on the CPU")
    assert CPU_REPLICAS_MEASURED in warning and "tok/s" in CPU_REPLICAS_MEASURED  # the measured numbers
    assert "running 2 replicas as asked" in warning
    plan = build_plan(cfg, [plan_model(cfg, cfg.model, cpu_box)], cpu_box)
    assert f"    warning: {warning}" in render_plan(plan).splitlines()


# --- real vLLM replicas ----------------------------------------------------------------------------------

PROBE = r"""
import json, sys
from omegaconf import OmegaConf
from runner.engines.build import build_engine
from runner.engines.base import SamplingSettings
from runner.engines.selection import Selection

folder = sys.argv[1]
args = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 28, "max_model_len": 512, "seed": 0,
        "distributed_executor_backend": "uni"}
engine_cfg = OmegaConf.create({"_target_": None, "cpu": args, "gpu": args, "args": {}, "hf": {},
                               "cpu_env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}})
model = OmegaConf.create({"name": "tiny", "path": folder, "gguf": None, "dtype": "float32", "max_model_len": 512,
                          "trust_remote_code": False, "load_format": "auto", "quantization": None, "revision": None})
prompts = [[1, 300 + 7 * i, 42, 9000 + i, 17] + [5] * (i % 4) for i in range(40)]
settings = [SamplingSettings(max_tokens=3 + 5 * (i % 3)) for i in range(40)]  # three settings, interleaved
out = {}
for dp in (1, 2):
    engine = build_engine(Selection("cpu", "test", data_parallel_size=dp), folder, model, engine_cfg)
    try:
        done = engine.generate(prompts, settings)
        scores = engine.loglikelihood([(p, [5, 6, 7]) for p in prompts])
        out[dp] = {"texts": [c.text for c in done], "tokens": [c.output_tokens for c in done],
                   "scores": [s.logprob for s in scores], "extra": engine.stats.extra}
    finally:
        engine.shutdown()
print("RESULT" + json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_vllm_replicas_give_the_single_engines_answers_with_per_request_settings(tiny_checkpoint, tmp_path):  # noqa: F811
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_checkpoint)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "VLLM_CACHE_ROOT": str(tmp_path / "vllm")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, f"rc={done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    one, two = json.loads(lines[0].removeprefix("RESULT")).values()
    assert two["texts"] == one["texts"]  # the same computation, only split by request, back in order
    assert two["tokens"] == one["tokens"]
    assert sorted(set(one["tokens"])) == [3, 8, 13]  # each request got its own max_tokens
    assert two["scores"] == pytest.approx(one["scores"], abs=1e-6)
    extra = two["extra"]
    assert extra["data_parallel_replicas"] == 2.0
    assert extra["kv_cache_tokens"] == 2 * one["extra"]["kv_cache_tokens"]
    assert extra["replica_0_requests"] > 0 and extra["replica_1_requests"] > 0
    assert extra["replica_0_requests"] + extra["replica_1_requests"] == 2 * 40  # generate + loglikelihood
    assert extra["replica_busy_max_over_mean"] >= 1.0


@pytest.mark.slow
def test_a_replica_that_cannot_load_fails_the_job_and_leaves_no_process(tmp_path):
    missing = str(tmp_path / "no_such_model")
    engine = {"cpu": {"enforce_eager": True}, "gpu": {}, "args": {}, "cpu_env": {}, "hf": {}}
    model = {
        "name": "missing",
        "path": missing,
        "gguf": None,
        "dtype": "float32",
        "max_model_len": 512,
        "trust_remote_code": False,
        "load_format": "auto",
        "quantization": None,
        "revision": None,
    }
    build = {"selection": Selection("cpu", "test"), "source": missing, "model": model, "engine": engine}
    with pytest.raises(RuntimeError, match="engine replica 0 failed to load"):
        ReplicatedEngine(build, 2, tokenizer_source=missing)
    assert multiprocessing.active_children() == []  # the other replica was stopped too, nothing hangs


# --- kill -9 during a data-parallel job -----------------------------------------------------------------

PER_DATASET = 4
DP_JOB = (
    f"limit={PER_DATASET}",
    # The replica machinery is the same for every engine; the transformers engine on the 14M random-weight
    # model loads in a second where vLLM takes fifteen, and one request per batch makes answers reach the
    # cache one by one, so "mid-job" is a real state.
    "debug=fast",
    "engine.hf.batch_size=1",
    "engine.data_parallel_size=2",
    *SHORT_ANSWERS,
    "cache=true",
)


@pytest.mark.slow
def test_a_data_parallel_job_killed_with_kill_9_resumes_without_recomputing_answers(tmp_path):
    import psutil

    out, cache = tmp_path / "out", tmp_path / "cache"
    where = (f"paths.output_dir={out}", f"paths.response_cache={cache}")
    total = 5 * PER_DATASET

    job = LiveCli(*DP_JOB, *where)
    try:
        job.wait_until(lambda: cached_answers(cache) > 0, timeout=400)
        replicas = psutil.Process(job.process.pid).children(recursive=True)
        assert len(replicas) >= 2, job.output[-3000:]
        os.kill(job.process.pid, signal.SIGKILL)  # `kill -9 <pid>`: no handler, no cleanup, no "stop" to send
        job.process.wait(30)
        # The replicas notice their runner is gone and exit by themselves: none keeps computing.
        _, alive = psutil.wait_procs(replicas, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        job.stop()
    answered = cached_answers(cache)
    assert 0 < answered < total

    rerun = run_cli(*DP_JOB, *where, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-5000:]
    (telemetry,) = [json.loads(p.read_text()) for p in out.glob("runs/*/*/telemetry.json")]  # the killed job wrote none
    # Every answer cached before the kill came from the cache; only the rest reached the replicas.
    assert telemetry["requests_total"] == total
    assert telemetry["requests_from_cache"] == answered
    assert telemetry["requests"] == total - answered
    assert telemetry["data_parallel_replicas"] == 2.0
    assert telemetry["replica_0_requests"] + telemetry["replica_1_requests"] == total - answered
    assert cached_answers(cache) == total
