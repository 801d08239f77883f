"""adapters.sandbox: limits, isolation, and hostile programs that must fail while the harness survives.

SAFETY RULE for this file: a hostile program may only ever target paths that the test itself
created for the purpose (throwaway files and dirs). The tests are meant to be run against a
deliberately broken sandbox too, where every attack succeeds; an attack on anything else (the repo,
a parent dir, /tmp as a whole) would then destroy real data.
"""

from __future__ import annotations

import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from adapters import sandbox
from adapters.sandbox import check_completions, run_program

REPO_ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def isolation() -> dict:
    return sandbox.probe()


def _run(code: str, **limits):
    return run_program(textwrap.dedent(code), **limits)


# The caller's hard deadline in the tests that ask for the supervisor's own stop: far out, it only bounds a hang.
HANG_BOUND_S = 120


@pytest.fixture
def caller_kills(monkeypatch) -> list[int]:
    """The runs the caller had to kill itself (`_kill_run`, its last resort once its hard deadline passed):
    [] when every run ended by the sandbox's own limits (the supervisor's timeout, a cap, the program's end).
    The hard deadline is pushed HANG_BOUND_S past the timeout, so a loaded machine never reaches it first."""
    killed: list[int] = []
    kill_run = sandbox._runs._kill_run

    def recording(pid: int, pidfd: int, uid: int) -> None:
        killed.append(pid)
        kill_run(pid, pidfd, uid)

    monkeypatch.setattr(sandbox._runs, "_KILL_GRACE_S", HANG_BOUND_S)
    monkeypatch.setattr(sandbox._runs, "_kill_run", recording)
    return killed


# --------------------------------------------------------------------------- basics


def test_passing_program_captures_output():
    result = _run("print('hello from the sandbox')")
    assert result.passed, result
    assert result.status == "passed" and result.returncode == 0
    assert "hello from the sandbox" in result.stdout_tail


def test_failing_program_reports_the_error():
    result = _run("assert 1 == 2, 'nope'")
    assert result.status == "failed" and result.returncode == 1
    assert "AssertionError: nope" in result.stderr_tail


@pytest.mark.parametrize(
    "code",
    ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit", "import os\nos.close(1)"],
    ids=["os._exit", "sys.exit", "SystemExit", "closed-stdout"],
)
def test_exit_zero_before_the_end_is_not_a_pass(code):
    result = _run(code)
    assert not result.passed
    assert result.status == "failed"


def test_environment_is_minimal_and_cwd_is_a_fresh_removed_dir():
    result = _run("""
        import os, sys
        print(sorted(os.environ))
        print("CWD", os.getcwd(), sorted(os.listdir(".")))
        open("scratch.txt", "w").write("x")
        print("FLAGS", sys.flags.isolated, sys.flags.no_site, os.sys.stdin is None or os.sys.stdin.read())
    """)
    assert result.passed, result
    assert "['LANG', 'PATH']" in result.stdout_tail
    cwd_line = next(line for line in result.stdout_tail.splitlines() if line.startswith("CWD"))
    _, cwd, files = cwd_line.split(" ", 2)
    assert files == "['prog.py']"
    assert not Path(cwd).exists()  # deleted after the run (or never on the host: private tmpfs)
    assert "FLAGS 1 1 " in result.stdout_tail  # -I -S; stdin at EOF


def test_code_runs_in_another_process():
    result = _run("import os\nprint('PID', os.getpid())")
    assert result.passed
    assert f"PID {os.getpid()}\n" not in result.stdout_tail


@pytest.mark.skipif(not AS_ROOT, reason="the uid drop applies when the caller is root")
def test_root_caller_runs_code_as_an_unprivileged_leased_uid(isolation):
    assert isolation["uid_drop"] is True
    assert isolation["uid"] in sandbox.UID_RANGE and isolation["uid"] != 0
    assert isolation["no_new_privs"] is True
    result = _run("import os\nprint('IDS', os.getresuid(), os.getresgid(), os.getgroups())")
    uid = result.isolation["uid"]
    assert f"IDS ({uid}, {uid}, {uid}) ({uid}, {uid}, {uid}) []" in result.stdout_tail


def test_everything_outside_the_private_tmpfs_is_read_only(isolation, tmp_path):
    if not isolation["mount_ns"]:
        pytest.skip("no mount namespace here")
    assert isolation["readonly_root"] is True
    # A new name only (nothing there to destroy), on a host mount outside the private tmpfs dirs: the
    # checkout itself may live under /tmp, which the sandbox replaces.
    target = Path("/usr/local") / f"readonly-probe-{uuid.uuid4().hex}"
    try:
        result = _run(f"""
            import errno
            try:
                open({str(target)!r}, "x")
                print("WROTE")
            except OSError as exc:
                print("ERRNO", errno.errorcode[exc.errno])
            open("scratch.txt", "w").write("the work dir stays writable")
        """)
        assert result.passed, result
        assert "ERRNO EROFS" in result.stdout_tail
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_isolation_report_is_complete(isolation):
    keys = ("net_ns", "mount_ns", "pid_ns", "uid_drop", "no_new_privs", "readonly_root", "private_tmp", "masked")
    for key in (*keys, "rlimits"):
        assert key in isolation
    for limit in ("cpu:", "as:", "fsize:", "nofile:", "core:0"):
        assert limit in isolation["rlimits"]
    if AS_ROOT:
        assert "nproc:" in isolation["rlimits"]


# --------------------------------------------------------------------------- resource attacks


def test_infinite_loop_times_out(caller_kills):
    # The CPU-time limit (by default the timeout's) set above the timeout: on a busy machine the supervisor may
    # wake late, and the kernel's SIGXCPU at 1 s of CPU time would then stop the loop first.
    result = _run("while True:\n    pass", timeout_s=1, cpu_s=5)
    assert result.status == "timeout" and result.reason == "wall-clock timeout (1 s)"
    assert caller_kills == []  # the supervisor's own timeout stopped it, not the caller's last resort


def test_signal_handler_tricks_do_not_stop_the_kill(caller_kills):
    result = _run(
        """
        import signal, time
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_IGN)
        signal.alarm(0)
        while True:
            pass
        """,
        timeout_s=1.5,
    )
    assert result.status == "timeout" and result.reason == "wall-clock timeout (1.5 s)"
    assert caller_kills == []  # the supervisor's own timeout stopped it, not the caller's last resort


def test_cpu_time_limit_applies_below_the_wall_clock():
    result = _run("while True:\n    pass", timeout_s=30, cpu_s=1)
    # The reason is the CPU limit's (SIGXCPU) only when the wall-clock timeout had not fired first.
    assert result.status == "timeout" and result.reason == "CPU-time limit"


@pytest.fixture
def slow_setup(monkeypatch, tmp_path):
    """A sandbox whose set-up takes `delay` seconds longer, as on a machine loaded by other jobs: a fork server
    of this test's own, the real one with a sleep in the program's process before its exec (the last step of
    the set-up). Returns a function that sets the delay, for the server started by the test's first run."""
    delay = tmp_path / "delay"
    wrapper = tmp_path / "slow_server.py"
    wrapper.write_text(
        textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("_server", {sandbox._server.__file__!r})
        server = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(server)
        exec_program = server._exec_program
        delay = float(open({str(delay)!r}).read())  # read here: the sandbox's /tmp is a fresh tmpfs

        def slow(*args):
            time.sleep(delay)
            exec_program(*args)

        server._exec_program = slow
        server._serve(int(sys.argv[2]))
    """)
    )
    monkeypatch.setattr(sandbox._client._server, "__file__", str(wrapper))
    server = sandbox._client._Server()
    monkeypatch.setattr(sandbox._runs, "_SERVER", server)
    yield lambda seconds: delay.write_text(str(seconds))
    server.stop()


def test_a_slow_setup_does_not_eat_the_programs_timeout(slow_setup, caller_kills):
    """The wall-clock timeout is the program's own, from its exec: a set-up slowed past it by a loaded
    machine still runs the program (it used to end as `did not start the program`)."""
    slow_setup(3)
    result = _run("import time\ntime.sleep(0.5)\nprint('ran')", timeout_s=2)
    assert result.passed, result
    assert result.duration_s > 3  # the set-up really was slower than the program's timeout
    assert caller_kills == []


def test_a_setup_past_its_deadline_is_named(slow_setup, monkeypatch):
    """Set-up that never ends (here: past a one-second set-up deadline) is an error that says so."""
    monkeypatch.setattr(sandbox._runs, "SETUP_TIMEOUT_S", 1.0)
    slow_setup(30)
    result = _run("print('never')", timeout_s=10)
    assert result.status == "error" and result.returncode is None
    assert result.reason.startswith("sandbox did not start the program: its set-up (namespaces, mounts")
    assert "took over 1 s. The machine is overloaded" in result.reason  # its own deadline, not the program's


@pytest.mark.skipif(not AS_ROOT, reason="RLIMIT_NPROC is only set with a uid of the sandbox's own")
def test_fork_bomb_is_contained_and_fully_killed():
    result = _run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout_s=2,
    )
    assert not result.passed and result.status == "timeout"
    assert sandbox._processes_of_uid(result.isolation["uid"]) == []


def test_process_count_is_limited():
    result = _run(
        """
        import os, time
        started = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                started += 1
            except OSError:
                break
        print("STARTED", started)
        """,
        timeout_s=5,
        max_processes=16,
    )
    if not AS_ROOT:
        pytest.skip("RLIMIT_NPROC is only set with a uid of the sandbox's own")
    started = int(result.stdout_tail.split("STARTED ")[1].split()[0])
    assert started < 16


def test_escaped_daemon_is_killed_after_the_run():
    """setsid + double fork + ignored signals: still gone once run_program returns."""
    result = _run(
        """
        import os, signal, time
        ready, up = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                    signal.signal(sig, signal.SIG_IGN)
                os.write(up, b"up")
                time.sleep(600)
            os._exit(0)
        os.close(up)
        assert os.read(ready, 2) == b"up"  # the program ends only once its daemon runs, deaf to signals
        """,
        timeout_s=5,
    )
    assert result.passed  # the program itself is harmless; what it left behind is the point
    if AS_ROOT:
        assert sandbox._processes_of_uid(result.isolation["uid"]) == []


def test_memory_hog_is_refused():
    result = _run("b = bytearray(50 * 1024**3)\nprint('ALLOCATED')", memory_mb=512)
    assert not result.passed
    assert "ALLOCATED" not in result.stdout_tail
    assert "MemoryError" in result.stderr_tail


def test_file_size_is_limited():
    result = _run("open('big', 'wb').write(b'x' * (8 << 20))\nprint('WROTE')", file_size_mb=1)
    assert not result.passed
    assert "WROTE" not in result.stdout_tail


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_gigabytes_of_output_are_capped(stream, caller_kills):
    result = _run(
        f"""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(4096):  # 4 GiB
            sys.{stream}.write(chunk)
        """,
        timeout_s=20,
        max_output_bytes=1 << 20,
    )
    assert result.status == "output_limit"
    assert len(result.stdout_tail) <= 4000 and len(result.stderr_tail) <= 4000
    # The cap ended it: the program died of its broken pipe (an exit code of its own), it was not killed at
    # the 20 s timeout (no exit code) nor by the caller.
    assert result.returncode is not None and result.returncode > 0 and caller_kills == [], result


def test_segfault_is_a_failure():
    result = _run("import ctypes\nctypes.string_at(0)")
    assert result.status == "failed"
    assert result.returncode == -11 and "SIGSEGV" in result.reason


def test_recursion_bomb_is_a_failure():
    result = _run(
        """
        import sys
        sys.setrecursionlimit(10**8)
        def f(n):
            return f(n + 1) + 1
        f(0)
        """,
        timeout_s=10,
        memory_mb=256,  # 3.11 keeps Python frames on the heap: the limit ends it, not the C stack
    )
    assert not result.passed
    assert result.status in ("failed", "timeout")


# --------------------------------------------------------------------------- isolation attacks


def test_environment_secrets_are_not_visible(monkeypatch):
    token = f"sk-fake-{uuid.uuid4().hex}"
    monkeypatch.setenv("SANDBOX_TEST_API_TOKEN", token)
    result = _run(f"""
        import os
        print(dict(os.environ))
        for pid in ("1", "{os.getpid()}", "{os.getppid()}"):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as exc:
                print("environ", pid, type(exc).__name__)
    """)
    assert token not in result.stdout_tail + result.stderr_tail
    assert "SANDBOX_TEST_API_TOKEN" not in result.stdout_tail + result.stderr_tail


@pytest.mark.skipif(not AS_ROOT, reason="home and root-only files are protected by the uid drop")
def test_home_directory_and_root_only_files_are_unreadable():
    home = Path.home()
    secret = home / f".sandbox-test-secret-{uuid.uuid4().hex}"
    content = uuid.uuid4().hex
    secret.write_text(content)
    secret.chmod(0o600)
    try:
        result = _run(f"""
            import os
            for action, path in (("list", {str(home)!r}), ("read", {str(secret)!r}), ("read", "/etc/shadow")):
                try:
                    data = os.listdir(path) if action == "list" else open(path).read()
                    print(action, path, "OK", len(data))  # never the data itself
                except OSError as exc:
                    print(action, path, "DENIED", type(exc).__name__)
        """)
    finally:
        secret.unlink()
    output = result.stdout_tail + result.stderr_tail
    assert content not in output
    assert " OK " not in output
    assert output.count("DENIED") == 3


@pytest.mark.skipif(not AS_ROOT, reason="writes outside the work dir are stopped by the uid drop")
def test_writing_outside_the_work_dir_does_not_reach_the_host(isolation):
    token = uuid.uuid4().hex
    shared = [f"/tmp/pwned-{token}", f"/var/tmp/pwned-{token}", f"/dev/shm/pwned-{token}"]
    in_repo = str(REPO_ROOT / f"pwned-{token}")  # a new file only: nothing there to destroy
    try:
        result = _run(f"""
            for path in {[*shared, in_repo]!r}:
                try:
                    open(path, "x").write("pwned")
                    print("WROTE", path)
                except OSError as exc:
                    print("DENIED", path, type(exc).__name__)
        """)
        assert not Path(in_repo).exists()
        assert f"DENIED {in_repo}" in result.stdout_tail
        if "/tmp" not in isolation["private_tmp"]:
            pytest.skip("no mount namespace here: world-writable /tmp is shared with the host")
        for path in shared:
            assert not Path(path).exists(), path
    finally:
        for path in [*shared, in_repo]:
            Path(path).unlink(missing_ok=True)


@pytest.mark.skipif(not AS_ROOT, reason="other users' files are protected by the uid drop")
def test_deleting_files_outside_the_work_dir_fails(tmp_path):
    # Each sentinel sits alone in a throwaway dir made for this test: the attacks below (including
    # rmtree of the sentinel's own dir) can never reach anything else, even with the sandbox broken.
    throwaway = REPO_ROOT / f".sandbox-sentinel-{uuid.uuid4().hex}"
    throwaway.mkdir()
    throwaway.chmod(0o755)
    (tmp_path / "victim").mkdir()
    sentinels = [tmp_path / "victim" / "sentinel.txt", throwaway / "sentinel.txt"]
    for path in sentinels:
        path.write_text("keep me")
        path.chmod(0o644)
    try:
        result = _run(f"""
            import os, shutil
            for path in {[str(p) for p in sentinels]!r}:
                victim_dir = os.path.dirname(path)
                assert victim_dir.endswith(("/victim", "{throwaway.name}"))  # never anything wider
                for attack in (os.remove, lambda p: open(p, "w").close(), lambda p: shutil.rmtree(victim_dir)):
                    try:
                        attack(path)
                        print("DONE", path)
                    except OSError as exc:
                        print("DENIED", path, type(exc).__name__)
        """)
        assert "DONE" not in result.stdout_tail
        for path in sentinels:
            assert path.read_text() == "keep me"
    finally:
        for path in sentinels:
            path.unlink(missing_ok=True)
        if throwaway.exists():
            throwaway.rmdir()


def test_outbound_socket_fails(isolation):
    if not isolation["net_ns"]:
        pytest.skip(f"no network namespace here: {isolation.get('notes', 'unshare(CLONE_NEWNET) not permitted')}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = _run(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("CONNECTED")
            except OSError as exc:
                print("BLOCKED", type(exc).__name__, exc)
        """)
        # The run is over: a connection it made would already wait in the backlog (no waiting for one here).
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert "CONNECTED" not in result.stdout_tail
    assert "BLOCKED" in result.stdout_tail


def test_killing_the_parent_fails_and_the_harness_survives():
    me = os.getpid()
    result = _run(f"""
        import os, signal
        for target in (os.getppid(), {me}, {os.getppid()}):
            try:
                os.kill(target, signal.SIGKILL)
                print("KILLED", target)
            except OSError as exc:
                print("DENIED", target, type(exc).__name__)
    """)
    assert "KILLED" not in result.stdout_tail
    assert result.stdout_tail.count("DENIED") == 3
    os.kill(me, 0)  # still here (trivially, since this line runs; the point is the run above returned)


def test_hostile_and_honest_programs_in_parallel_do_not_interfere():
    """A fork bomb next to honest checks: the honest ones still pass (each run has a uid of its own)."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    honest = "import os, subprocess, sys\nprint(sum(range(10)))"
    programs = [bomb, honest, honest, "while True: pass", honest, honest]
    results = check_completions(programs, max_workers=3, timeout_s=3)
    assert [r.passed for r in results] == [False, True, True, False, True, True]
    uids = {r.isolation["uid"] for r in results}
    if AS_ROOT:
        assert len(uids) >= 3  # concurrent runs never share a uid
