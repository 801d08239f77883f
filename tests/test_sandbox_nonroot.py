"""The sandbox as an unprivileged user, for real: the test drops to uid 65534 (nobody) in a subprocess.

Two machines in one: as nobody where user namespaces are allowed (the sandbox isolates through one), and
as nobody where they are not (a chrooted process may not create user namespaces, which stands in for a
kernel or cluster node that forbids them). There the sandbox fails closed: no program runs unless the
user accepts weak isolation, and a code dataset fails saying what is missing.

The subprocess sees the project's interpreter through a private mount namespace (its home directory is
not readable by other users here); nothing outside that namespace changes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import skip_when_quick

from runner.config.resolvers import PROJECT_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root (CI runs as root)")

NOBODY = 65534


def as_nobody(command: list[str], tmp_path: Path, *, user_namespaces: bool, timeout: float = 300):
    """Run `command` as uid/gid 65534 with the project readable; without user namespaces when asked."""
    python = Path(os.path.realpath(PROJECT_ROOT / ".venv" / "bin" / "python"))
    view = tmp_path / "view"
    setup = [
        "set -e",
        # The interpreter may live under a home directory others cannot enter (pyenv under /root): a
        # private view of that directory, enterable, holding only what is needed.
        f"home=$(echo {python} | cut -d/ -f1-2); top=$(echo {python} | cut -d/ -f3)",
        f'mkdir -p {view}/inner/"$top"; chmod 711 {view} {view}/inner',
        f'mount --bind "$home/$top" {view}/inner/"$top"; mount --rbind {view}/inner "$home"',
    ]
    root = ""
    if not user_namespaces:
        setup += [f"mkdir -p {view}/fs", f"mount --rbind / {view}/fs"]
        root = f"chroot {view}/fs "
    drop = f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --reset-env"
    env = "env HOME=/tmp PATH=/usr/bin:/bin HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true"
    quoted = " ".join(shlex.quote(part) for part in command)
    script = "\n".join([*setup, f"cd {PROJECT_ROOT}", f"exec {root}{drop} {env} {quoted}"])
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PROBE = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.getcwd())
    from adapters.sandbox import missing_isolation, probe, run_program
    strict = run_program("print('ran')")
    weak = run_program("print('ran')", allow_weak_isolation=True)
    print("RESULT" + json.dumps({
        "uid": os.geteuid(), "missing": missing_isolation(probe()),
        "strict": [strict.status, strict.reason, strict.stdout_tail.split()[:1]],
        "weak": [weak.status, weak.isolation["uid"], weak.isolation["user_ns"]],
    }))
    """
)


def _probe(tmp_path, user_namespaces: bool) -> dict:
    python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
    done = as_nobody([python, "-c", PROBE], tmp_path, user_namespaces=user_namespaces)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[0].removeprefix("RESULT"))


def test_as_nobody_with_user_namespaces_the_sandbox_isolates_fully(tmp_path):
    found = _probe(tmp_path, user_namespaces=True)
    assert found["uid"] == NOBODY and found["missing"] == []
    assert found["strict"] == ["passed", "", ["ran"]]
    assert found["weak"] == ["passed", NOBODY, True]  # isolated through a user namespace


def test_as_nobody_without_user_namespaces_no_program_runs_unless_weak_isolation_is_accepted(tmp_path):
    found = _probe(tmp_path, user_namespaces=False)
    assert found["uid"] == NOBODY
    assert "no network namespace (the code could reach the network)" in found["missing"]
    assert "no unprivileged uid or user namespace (the code would run with your own uid)" in found["missing"]
    status, reason, stdout = found["strict"]
    assert status == "error" and "isolation incomplete: no network namespace" in reason and stdout == []
    assert found["weak"] == ["passed", NOBODY, False]  # ran, as the user's own uid: what was accepted


@pytest.fixture
def open_dir():
    """A folder nobody can write (pytest's own tmp folders are private to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="runner-nobody-", dir="/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_code_dataset_fails_closed_saying_what_is_missing_and_runs_when_weak_isolation_is_accepted(
    tmp_path, open_dir
):
    skip_when_quick("runs a job through the CLI as another user")
    from runner.catalog.readiness import load_model
    from runner.catalog.weights import resolve_model

    resolve_model(load_model("tiny_llama"), str(PROJECT_ROOT / ".cache"))  # prepared by root, read by nobody
    cache = open_dir / "cache"  # the job's own writable cache, with the prepared models in it
    cache.mkdir()
    cache.chmod(0o777)
    for name in ("models", "dummy"):
        (cache / name).symlink_to(PROJECT_ROOT / ".cache" / name)
    out = open_dir / "out"
    python = str(PROJECT_ROOT / ".venv" / "bin" / "python")
    job = [python, "-m", "runner", "category=efficiency", "debug=fast", "limit=1", "~category.datasets.gsm8k"]
    job += ["~category.datasets.coordinate_processing", f"paths.output_dir={out}", f"paths.cache_dir={cache}"]
    refused = as_nobody(job, tmp_path, user_namespaces=False)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "Dataset humaneval_offline runs model-written code, and the sandbox cannot fully isolate it" in (
        refused.stderr
    )
    assert "no network namespace" in refused.stderr and "sandbox.allow_weak_isolation=true" in refused.stderr
    assert not list(out.glob("runs/*/*/lm_eval/**/samples_*.jsonl"))  # nothing was generated, nothing ran

    accepted = as_nobody([*job, "sandbox.allow_weak_isolation=true"], tmp_path, user_namespaces=False)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-3000:]
    assert "warning: model-written code ran with weak isolation (sandbox.allow_weak_isolation=true)" in (
        accepted.stdout
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("efficiency").experiment_id], order_by=["start_time"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert runs[1].data.tags["sandbox_isolation"].startswith("weak: no network namespace")
    assert runs[1].data.tags["sandbox_allow_weak_isolation"] == "true"
