"""bench/job_scaling.py's parts that need no engine: the generated task (lm-eval loads and scores it), the
category the CLI composes around it, and the timing hook the job process loads as `sitecustomize`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_ROOT, cli_env, run_cli

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import job_scaling  # noqa: E402


def test_prompts_are_distinct_and_reproducible():
    rows = job_scaling.prompts(2000)
    assert len({r["prompt"] for r in rows}) == 2000
    assert rows == job_scaling.prompts(2000)
    number = rows[0]["prompt"].split("after ")[1].split(",")[0]
    assert rows[0]["answer"] == str(int(number) + 1)


def test_lm_eval_loads_and_scores_the_generated_task(tmp_path):
    from lm_eval.tasks import TaskManager

    tasks = job_scaling.write_task(tmp_path, 7, 16)
    task = TaskManager(include_path=str(tasks), include_defaults=False).load_task_or_group([job_scaling.TASK])[
        job_scaling.TASK
    ]
    docs = list(task.test_docs())
    assert len(docs) == 7
    assert task.config.generation_kwargs["max_gen_toks"] == 16
    target = task.doc_to_target(docs[0])
    # Only the first number counts: a list after it, or leading space, does not change the score.
    assert task.process_results(docs[0], [f" {target}, {int(target) + 1}, ..."])["exact_match"] == 1.0
    assert task.process_results(docs[0], ["The five whole numbers"])["exact_match"] == 0.0


def test_the_cli_composes_the_category_and_finds_the_task_ready(tmp_path):
    conf = job_scaling.write_category(tmp_path / "conf")
    tasks = job_scaling.write_task(tmp_path / "n12", 12, 16)
    result = run_cli(
        "--config-dir",
        str(conf),
        f"category={job_scaling.CATEGORY}",
        "mode=plan",
        "output=json",
        f"paths.tasks_dir={tasks}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'out' / 'plan'}",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    plan = json.loads(result.stdout)
    assert plan["category"] == job_scaling.CATEGORY
    [dataset] = plan["datasets"]
    assert dataset["tasks"] == [job_scaling.TASK] and dataset["ready"] and dataset["samples"] == 12, dataset


def test_the_hook_times_the_runners_functions_in_a_child_process(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(job_scaling.HOOK)
    timings = tmp_path / "timings"
    timings.mkdir()
    code = (
        "from runner.reporting import compare; compare.compare_runs([], {}, None); compare.compare_runs([], {}, None); "
        "import mlflow"
    )
    env = cli_env({"PYTHONPATH": str(hooks), "JOB_SCALING_TIMINGS": str(timings)})
    before = time.time()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True, timeout=60)
    after = time.time()
    found = job_scaling.read_timings(timings, since=0)
    calls = found["calls"]["runner.reporting.compare.compare_runs"]
    assert len(calls) == 2 and all(len(call) == 6 for call in calls)
    # Each call: its start (unix time) and its seconds lie inside the child's run, the second call after the first.
    for start, seconds, rss, peak, cpu, blocks in calls:
        assert before <= start and seconds >= 0 and start + seconds <= after
        assert 0 < rss <= peak and 0 <= cpu and blocks > 0
    assert calls[0][0] <= calls[1][0]
    assert job_scaling.total(found["calls"], "runner.reporting.compare.compare_runs") == pytest.approx(
        calls[0][1] + calls[1][1]
    )
    [imported] = found["calls"]["import mlflow"]  # timed once, apart from the calls around it
    start, seconds, rss, peak, cpu, blocks = imported
    assert calls[1][0] <= start and seconds > 0 and start + seconds <= after  # after the calls, its own entry
    # What it timed is the import itself: Python's objects and the process's memory grew by mlflow's modules.
    assert blocks > calls[1][5] and rss > calls[1][2]
    assert found["missing"] == []
    assert not os.listdir(timings)  # read once, then removed
