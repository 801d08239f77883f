"""runner/machine/allocator.py: `python -m runner` runs on tcmalloc under vLLM's CPU build, as vLLM's own
engine-core process does, re-executed once with the same process id; a user can keep glibc's malloc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from runner.machine import allocator

LIB = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def test_the_cpu_build_preloads_tcmalloc_before_what_the_user_preloads():
    env = allocator.preload_environment({"LD_PRELOAD": "/opt/libfoo.so", "A": "1"}, LIB, cpu=True)
    assert env is not None and env["LD_PRELOAD"] == f"{LIB}:/opt/libfoo.so" and env["A"] == "1"
    # tcmalloc's own report of every allocation over 1 GiB (the KV cache is one) is turned off, unless set.
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) > 1 << 40
    mine = allocator.preload_environment({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, LIB, cpu=True)
    assert mine is not None and mine["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"
    assert mine["LD_PRELOAD"] == str(LIB)


@pytest.mark.parametrize(
    ("environ", "library", "cpu"),
    [
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, LIB, True),  # already preloaded: no second re-execution
        ({"RUNNER_TCMALLOC": "0"}, LIB, True),  # the user keeps glibc's malloc
        ({"RUNNER_TCMALLOC": "off"}, LIB, True),
        ({}, None, True),  # no tcmalloc on this machine
        ({}, LIB, False),  # the GPU build: vLLM's engine core is its own process, which vLLM sets up itself
    ],
)
def test_no_reexecution_where_it_would_change_nothing_or_was_declined(environ, library, cpu):
    assert allocator.preload_environment(environ, library, cpu=cpu) is None


def test_python_m_runner_reexecutes_itself_once_on_tcmalloc(tmp_path):
    """A real `python -m runner mode=plan`: a sitecustomize that every Python start loads records each start's
    process id and, at exit, whether tcmalloc is mapped."""
    if not (allocator.cpu_build() and allocator.find_tcmalloc()):
        pytest.skip("vLLM's CPU build and tcmalloc (Debian's libtcmalloc-minimal4, `make model`) are not both here")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    log = tmp_path / "starts.jsonl"
    (hooks / "sitecustomize.py").write_text(
        "import atexit, json, os\n"
        f"_log = {str(log)!r}\n"
        "def _write(event):\n"
        "    with open(_log, 'a') as f:\n"
        "        f.write(json.dumps({'pid': os.getpid(), 'event': event,\n"
        "                            'tcmalloc': 'libtcmalloc' in open('/proc/self/maps').read()}) + '\\n')\n"
        "_write('start')\n"
        "atexit.register(_write, 'exit')\n"
    )
    done = run_cli(
        "mode=plan", f"paths.output_dir={tmp_path / 'out'}", env={"PYTHONPATH": str(hooks)},
        unset=("RUNNER_TCMALLOC", "LD_PRELOAD"),  # the default a user gets, whatever this shell opted into
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    # Started twice in one process (the second start is the re-execution), ended once, on tcmalloc.
    assert [e["event"] for e in events] == ["start", "start", "exit"], events
    assert len({e["pid"] for e in events}) == 1
    assert [e["tcmalloc"] for e in events] == [False, True, True]
