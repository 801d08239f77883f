"""No hangs: an engine that never finishes loading, or stops answering mid-pass, ends the job FAILED after
engine.load_timeout_s / engine.stall_timeout_s with one message, its MLflow run ended, and no process of
the job left behind. The hangs are engines of a test module (a real hang cannot be ordered on demand)."""

from __future__ import annotations

import json
import re

import psutil
import pytest
from conftest import PROJECT_ROOT, run_cli
from mlflow import MlflowClient

HANGING_ENGINES = """
import subprocess, sys, time
from pathlib import Path

from my_engines import CannedEngine


class NeverLoads(CannedEngine):
    @classmethod
    def from_config(cls, **_):
        time.sleep(600)  # what a load waiting for tensor-parallel ranks that never start looks like


class StopsAnswering(CannedEngine):
    def _generate(self, prompts, settings, on_result):
        # A worker process, as vLLM's are, then silence.
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(self.answer).write_text(str(worker.pid))
        time.sleep(600)
"""


@pytest.mark.parametrize(
    ("engine", "setting", "says"),
    [
        ("NeverLoads", "engine.load_timeout_s=3", "No progress loading the engine for 3 s (engine.load_timeout_s=3)"),
        (
            "StopsAnswering",
            "engine.stall_timeout_s=3",
            "No progress in the engine's generate pass for 3 s (engine.stall_timeout_s=3)",
        ),
    ],
)
def test_a_hung_engine_ends_the_job_failed_in_bounded_time_leaving_no_process(tmp_path, engine, setting, says):
    docs = (PROJECT_ROOT / "docs" / "engines.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", docs, re.S)
    (tmp_path / "my_engines.py").write_text(example)
    (tmp_path / "hanging_engines.py").write_text(HANGING_ENGINES)
    pid_file = tmp_path / "worker.pid"
    out = tmp_path / "out"
    only = [
        f"~category.datasets.{n}" for n in ("coordinate_processing", "address_parsing", "location_ner", "ner_locations")
    ]
    job = [f"engine._target_=hanging_engines.{engine}", f"+engine.answer={pid_file}", setting, "limit=1", "cache=false"]
    # The engines hang for 600 s, past this bound on the whole job (a hang of the test): the job can only have
    # ended by the watchdog, which says so with its setting, and exit code 3.
    result = run_cli(*job, *only, f"paths.output_dir={out}", env={"PYTHONPATH": str(tmp_path)}, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in result.stdout
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    assert run.info.status == "FAILED" and says in run.data.tags["error"]
    (record,) = out.glob("runs/*/*/tracking.json")
    assert json.loads(record.read_text())["status"] == "FAILED"
    if pid_file.exists():  # the engine's worker went with the job
        assert not psutil.pid_exists(int(pid_file.read_text())) or psutil.Process(
            int(pid_file.read_text())
        ).status() == (psutil.STATUS_ZOMBIE)
    else:
        assert engine == "NeverLoads"
