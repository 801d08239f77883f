"""What a person sees: a real job in a pseudo-terminal shows a live bar that advances, no library log line,
and the summary; in a pipe, plain lines without control characters; a 40-column terminal still gets a
readable line. Plus the progress arithmetic itself, without an engine."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from conftest import PROJECT_ROOT, cli_env, run_cli, skip_when_quick

from runner.console.progress import RATE_WINDOW_S, JobProgress

# Lines libraries print when they are let through: none of them may reach the console by default.
LIBRARY_NOISE = (
    "[vllm", "INFO", "FutureWarning", "Triton not available", "NUMA binding", "Loading safetensors",
    "Checking cached requests", "Custom kwargs", "[mlflow", "[lm_eval", "Running generate_until",
)  # fmt: skip
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ONLY_TWO = ["~category.datasets.address_parsing", "~category.datasets.location_ner", "~category.datasets.ner_locations"]


def run_in_terminal(args: list[str], columns: int, rows: int = 40, timeout: float = 600) -> str:
    """`python -m runner ARGS` with a pseudo-terminal as stdin, stdout and stderr; everything it wrote."""
    skip_when_quick("runs a job in a terminal")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = cli_env({"TERM": "xterm-256color"})
    env.pop("COLUMNS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", *args], cwd=PROJECT_ROOT, env=env,
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_a_job_in_a_terminal_shows_a_live_bar_and_no_library_noise(tmp_path):
    # The transformers engine one request at a time: answers arrive one by one, like vLLM's, at a tenth of the cost.
    job = ["debug=fast", "engine.hf.batch_size=1", "limit=4"]
    out = run_in_terminal([*job, f"paths.output_dir={tmp_path}", *ONLY_TWO], columns=120)
    screen = ANSI.sub("", out)
    assert "━" in out  # rich's bar
    done = {int(m[1]) for m in re.finditer(r"coordinate_processing ━*[╺╸━ ]*(\d)/4", screen)}
    assert len(done) >= 2, screen[-3000:]  # the bar moved while the dataset was generating
    for noise in LIBRARY_NOISE:
        assert noise not in screen, noise
    assert "loaded tiny_llama on hf in" in screen
    # One load, one number: the live line splits its wait into imports and the summary's `model load`.
    split = r"\(imports ([\d.]+) s, model load ([\d.]+) s\)"
    loaded = re.search(r"loaded tiny_llama on hf in ([\d.]+) s " + split, screen)
    assert loaded, screen[-3000:]
    assert float(loaded[1]) == pytest.approx(float(loaded[2]) + float(loaded[3]))
    assert f"model load {loaded[3]} s · wall" in screen
    assert "spatial_reasoning: acc " in screen and "coordinate_processing: acc " in screen
    assert "MLflow run:" in screen and "output dir:" in screen  # the summary


def test_a_forty_column_terminal_still_gets_a_readable_line(tmp_path):
    out = run_in_terminal(
        ["debug=fast", "limit=8", f"paths.output_dir={tmp_path}", *ONLY_TWO],
        columns=40,
    )
    # A count stands alone ("3/8"), so the summary's run directory (".../2026-11-29/16-30-37_...") is not one.
    count = re.compile(r"(?<![\w/-])\d+/(8|16)(?![\w/-])")
    lines = [line for line in ANSI.sub("", out).replace("\r", "\n").splitlines() if count.search(line)]
    assert lines, out[-2000:]
    assert all(len(line.rstrip()) <= 40 for line in lines)
    assert any(re.search(r"job +\d+/16 · \d+ tok/s", line) for line in lines)  # the job's count and rate fit
    assert any(re.search(r"spatial_reasoning +\d/8", line) for line in lines)  # and each dataset's count


def test_in_a_pipe_plain_lines_and_verbose_lets_the_library_logs_through(tmp_path):
    job = ["debug=fast", f"paths.output_dir={tmp_path}", *ONLY_TWO]
    quiet, loud = run_cli(*job), run_cli(*job, "verbose=true")
    assert quiet.returncode == loud.returncode == 0, quiet.stdout[-3000:] + loud.stdout[-3000:]
    assert "\x1b" not in quiet.stdout and "\r" not in quiet.stdout  # no cursor movement, no colours
    assert re.search(r"^\d\d:\d\d:\d\d spatial_reasoning: acc ", quiet.stdout, re.M)
    for noise in LIBRARY_NOISE:
        assert noise not in quiet.stdout, noise
    assert "[lm_eval" in loud.stdout  # verbose=true: library records on the console too
    logs = sorted((tmp_path / "runs").rglob("runner.log"))
    assert len(logs) == 2 and all("[lm_eval" in log.read_text() for log in logs)  # both runs logged them


def test_a_finished_sweep_keeps_library_lines_in_its_log_not_on_the_console(tmp_path):
    # Two jobs that fail at once (qwen25_7b's weights are not on this machine); the sweep still ends with its
    # report, whose first figure makes matplotlib build its font cache (a fresh MPLCONFIGDIR) and say so.
    fresh_font_cache = {"MPLCONFIGDIR": str(tmp_path / "mpl")}
    result = run_cli("-m", "model=qwen25_7b", "limit=1,2", f"paths.output_dir={tmp_path}", env=fresh_font_cache)
    assert result.returncode == 1, result.stdout[-3000:]
    out = result.stdout
    assert "[HYDRA] Launching 2 jobs locally" in out and "comparison report:" in out  # Hydra's and the runner's
    assert "[HYDRA] Report logged to MLflow experiment 'text_geospatial'" in out
    assert "fontManager" not in out and "matplotlib" not in out, out
    (log,) = tmp_path.glob("multirun/*/*/sweep.log")
    assert "[matplotlib.font_manager][INFO] - generated new fontManager" in log.read_text()


# --- the progress arithmetic, with a clock of its own ---

HANG_S = 30  # bounds a hang only: the events below come at once when the code is right


class Clock:
    """The time JobProgress(clock=...) reads: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_loaded_line_names_the_summarys_model_load_beside_the_whole_wait(capsys):
    clock = Clock()
    progress = JobProgress(tty=False, enabled=True, clock=clock)
    with progress.loading("smollm2_135m on cpu") as load:
        clock.advance(0.3)  # importing the engine's libraries, then its own load
        load.model_s = 0.1  # the engine's own load (EngineStats.load_seconds: the summary's `model load`)
    line = capsys.readouterr().out.splitlines()[-1]  # after `loading smollm2_135m on cpu ...`
    split = r"\(imports 0\.2 s, model load 0\.1 s\)"
    assert re.fullmatch(r"\d\d:\d\d:\d\d loaded smollm2_135m on cpu in 0\.3 s " + split, line), line
    with progress.loading("model"):  # an engine that does not measure its load: the wait alone
        pass
    assert re.fullmatch(r"\d\d:\d\d:\d\d loaded model in 0\.0 s", capsys.readouterr().out.splitlines()[-1])


def test_plain_lines_come_at_most_every_interval_with_the_jobs_count_rate_and_eta(capsys):
    clock, ticks = Clock(), []
    progress = JobProgress(
        tty=False, interval_s=1.0, on_tick=lambda done, rate: ticks.append((done, rate)), clock=clock, tick_s=None
    )
    with progress.dataset("ds") as row:
        row.cached(10)  # answered from the response cache: done at once
        row.expect(30)
        for _ in range(10):  # an answer every 0.25 s, and a tick of the display after each
            row.advance(1, output_tokens=20)
            clock.advance(0.25)
            progress.tick()
    lines = [line for line in capsys.readouterr().out.splitlines() if " job " in line]
    # 2.5 s of work, ten ticks: a line at 1 s and at 2 s, none between. 80 tok/s (20 tokens every 0.25 s);
    # the ETA counts the engine's 30 requests only: 4 answered in 1 s, 26 to go.
    assert [line[9:] for line in lines] == [
        "job 14/40 · 80 tok/s · ETA 6s · 1/1 datasets waiting",
        "job 18/40 · 80 tok/s · ETA 5s · 1/1 datasets waiting",
    ], lines
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), lines
    assert ticks == [(14, pytest.approx(80)), (18, pytest.approx(80))]  # MLflow's progress metrics, every 1 s


def test_datasets_sharing_the_pass_get_one_line_for_the_job_and_its_totals_reach_mlflow(capsys):
    """A job's datasets share the engine pass: one line counts the whole job and how many datasets still
    wait (a finished one has its score line); MLflow's progress counts the whole job."""
    clock, ticks = Clock(), []
    progress = JobProgress(
        tty=False, interval_s=1.0, on_tick=lambda done, rate: ticks.append((done, rate)), clock=clock, tick_s=None
    )
    with progress.dataset("first") as first, progress.dataset("second") as second:
        first.expect(2)
        second.expect(4)
        first.advance(2, output_tokens=10)  # first is done
        second.advance(1, output_tokens=10)
        clock.advance(1.0)
        progress.tick()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(r" job 3/6 · \d+ tok/s · ETA \d+s · 1/2 datasets waiting$", lines[0]), lines
    assert [done for done, _ in ticks] == [3]  # the job's requests done, both datasets together


def test_the_ticker_thread_ticks_while_datasets_run_and_stops_with_the_last():
    ticked = threading.Event()
    progress = JobProgress(tty=False, interval_s=0.0, on_tick=lambda done, rate: ticked.set(), tick_s=0.01)
    with progress.dataset("ds"):
        assert ticked.wait(HANG_S), "the ticker thread never ticked"
        ticker = progress._ticker
    assert ticker is not None and not ticker.is_alive()  # joined when the last dataset ended


def test_rate_is_over_recent_answers_and_eta_counts_only_the_engines_pace():
    clock = Clock()
    progress = JobProgress(tty=False, enabled=True, clock=clock, tick_s=None)
    with progress.dataset("ds") as row:
        row.cached(90)  # from the cache, instantly: not the engine's pace
        row.expect(10)
        clock.advance(5)
        row.advance(5, output_tokens=500)
        assert progress.rate() == pytest.approx(100)  # 500 tokens over 5 s
        assert progress.eta() == pytest.approx(5)  # the engine answered 5 in 5 s, 5 to go
        clock.advance(20)
        row.advance(1, output_tokens=100)  # the answers 20 s ago have left the window: 100 tokens over 10 s
        assert progress.rate() == pytest.approx(100 / RATE_WINDOW_S)


def test_a_job_of_scores_only_shows_requests_and_input_tokens_per_second_not_0_tok_s(capsys):
    """Log-likelihood requests (multiple choice) generate nothing: the line shows their pace instead."""
    clock = Clock()
    progress = JobProgress(tty=False, interval_s=1.0, clock=clock, tick_s=None)
    with progress.dataset("arc") as row:
        row.expect(40)
        for _ in range(8):  # a request every 0.25 s, each 120 input tokens (context and continuation)
            clock.advance(0.25)
            row.advance(1, output_tokens=0, input_tokens=120)
            progress.tick()
    lines = [line[9:] for line in capsys.readouterr().out.splitlines() if " job " in line]
    assert lines and lines[-1].startswith("job 8/40 · 4.0 req/s · 480 input tok/s · ETA"), lines
    assert not any("tok/s ·" in line and " 0 tok/s" in line for line in lines)
    with progress.dataset("gsm8k") as row:  # once something is generated, output tok/s is the job's pace again
        row.expect(1)
        row.advance(1, output_tokens=50)
        assert re.search(r"· \d+ tok/s ·", progress.info())


def test_the_engines_kv_cache_use_is_shown_where_it_reports_one(capsys):
    clock = Clock()
    progress = JobProgress(tty=False, interval_s=0.5, kv_cache_usage=lambda: 0.37, clock=clock, tick_s=None)
    with progress.dataset("ds") as row:
        row.expect(4)
        row.advance(1, output_tokens=10)
        clock.advance(0.5)
        progress.tick()  # the tick reads the engine's KV-cache use
    assert re.search(r"job 1/4 · \d+ tok/s · KV 37% · ETA", capsys.readouterr().out)


def test_the_eta_counts_from_the_end_of_the_model_load_not_from_the_first_request():
    clock = Clock()
    progress = JobProgress(tty=False, enabled=True, clock=clock, tick_s=None)
    with progress.dataset("ds") as row:
        row.expect(10)  # the first request reaches the lazy engine, which loads the model first
        with progress.loading("model"):
            clock.advance(30)  # a 30-second load
        clock.advance(5)
        row.advance(5, output_tokens=50)
        assert progress.eta() == pytest.approx(5)  # 5 answered in the 5 s since the load, 5 to go


def test_no_eta_until_a_tenth_of_the_engines_requests_are_back():
    progress = JobProgress(tty=False, enabled=True)
    with progress.dataset("ds") as row:
        row.cached(500)  # answered from the cache: not the engine's
        row.expect(100)
        row.advance(9)
        assert progress.eta() is None and "ETA" not in progress.line()
        row.advance(1)
        assert progress.eta() is not None and "ETA" in progress.line()


def test_a_ctrl_c_inside_loggings_lock_does_not_deadlock_the_job_closing_its_display(monkeypatch):
    # Ctrl-C can interrupt the main thread between logging's lock acquire and its `try`: the lock stays held
    # by the main thread. A dataset thread ending then must not hold the display's lock while it waits on
    # logging's, or close() (main thread) waits on it forever: the job hung instead of exiting 130.
    import logging

    progress = JobProgress(tty=False, enabled=True)
    entered, go, ended, asks = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def dataset() -> None:
        with progress.dataset("ds"):
            entered.set()
            go.wait(HANG_S)
        ended.set()

    worker = threading.Thread(target=dataset, daemon=True)
    worker.start()
    assert entered.wait(HANG_S)
    real = logging._lock

    class Spy:  # logging's module lock, saying when the dataset thread asks for it
        def acquire(self, *args: object, **kwargs: object) -> bool:
            if threading.current_thread() is worker:
                asks.set()
            return real.acquire(*args, **kwargs)

        def release(self) -> None:
            real.release()

        def _at_fork_reinit(self) -> None:
            real._at_fork_reinit()

        def __enter__(self) -> bool:
            return self.acquire()

        def __exit__(self, *exc: object) -> None:
            self.release()

    monkeypatch.setattr(logging, "_lock", Spy())
    real.acquire()  # what the interrupted main thread leaves behind
    try:
        go.set()
        assert asks.wait(HANG_S)  # the dataset ends and now waits on logging's lock
        closer = threading.Thread(target=progress.close, daemon=True)  # the main thread's next step
        closer.start()
        closer.join(HANG_S)
        assert not closer.is_alive(), "close() deadlocked on the display's lock"
    finally:
        real.release()
    assert ended.wait(HANG_S)
