"""The bad-input matrix: every mistake a user can make ends with exit code != 0 and one paragraph naming the
problem and the fix; no traceback (unless HYDRA_FULL_ERROR=1), no MLflow run left RUNNING, nothing
half-written that looks like a result. docs/reliability.md lists each case with the test that proves it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SHORT_ANSWERS, LiveCli, assert_no_process_left, free_port, run_cli

GEO_ONLY_SPATIAL = [f"~category.datasets.{n}" for n in ("coordinate_processing", "address_parsing", "location_ner")] + [
    "~category.datasets.ner_locations"
]


# Where a case needs a job that really evaluates something: debug=fast (conf/debug/fast.yaml), a 14M
# random-weight model on transformers, nothing cached, no system metrics.
CHEAPEST_JOB = "debug=fast"


def _statuses(out: Path, experiment: str) -> list[tuple[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [(run.info.status, run.data.tags.get("error", "")) for run in runs]


def _assert_one_clear_error(result: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    output = result.stdout
    assert result.returncode == code, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], output[-4000:]  # one paragraph, naming the problem
    return errors[0]


def _assert_nothing_looks_like_a_result(out: Path) -> None:
    assert not list(out.glob("runs/*/*/lm_eval/**/results_*.json"))
    assert not list(out.glob("runs/*/*/telemetry.json"))


def _assert_failed_before_any_result(result: subprocess.CompletedProcess, out: Path, message: str) -> None:
    """One clear error, the job's MLflow run ended FAILED with it, and nothing that looks like a result."""
    _assert_one_clear_error(result, message)
    ((status, error),) = _statuses(out, "text_geospatial")
    assert status == "FAILED" and message in error
    _assert_nothing_looks_like_a_result(out)


# --- rejected while the config is composed or checked: nothing runs, no MLflow run is made ---------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param("engine=ghost", "Could not find 'engine/ghost'", id="unknown-engine-option"),
        pytest.param("limt=5", "Key 'limt' not in 'RunnerConfig'", id="misspelled-key"),
        pytest.param("limit=abc", "Value 'abc' of type 'str' could not be converted to Integer", id="wrong-type"),
        pytest.param("tracking.http_timeout_s=soon", "could not be converted to Float", id="wrong-type-nested"),
    ],
)
def test_hydra_rejects_the_override_and_lists_what_is_valid(tmp_path, override, message):
    result = run_cli(override, "mode=plan", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stdout and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param("limit=-3", "limit=-3 must be a positive number", id="negative-limit"),
        pytest.param("limit=0", "limit=0 must be a positive number", id="zero-limit"),
        pytest.param("mode=plot", "mode='plot' is not one of run, list, plan, doctor, sync, report", id="unknown-mode"),
        pytest.param("output=xml", "output='xml' is not one of text, json", id="unknown-output"),
        pytest.param("model.params_b=-1", "model.params_b=-1.0 must be positive", id="negative-model-size"),
        pytest.param("tracking.http_timeout_s=0", "tracking.http_timeout_s=0.0 must be positive", id="zero-timeout"),
        pytest.param(
            "tracking.dead_after_s=40",
            "tracking.dead_after_s=40.0 must be more than twice tracking.heartbeat_s=30.0",
            id="dead-before-two-heartbeats",
        ),
        pytest.param("seed=abc", "seed='abc': 'abc' is not an integer or None", id="seed-lm-eval-would-refuse"),
        pytest.param(
            "category.models=[qwen25_7b,ghost]",
            "conf/category/text_geospatial.yaml lists model(s) ghost",
            id="category-names-a-missing-model",
        ),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_key(tmp_path, override, message):
    mode = [] if override.startswith("mode=") else ["mode=plan"]
    result = run_cli(override, *mode, f"paths.output_dir={tmp_path}")
    _assert_one_clear_error(result, message)
    assert not (tmp_path / "mlflow.db").exists()  # rejected before any MLflow run existed


def _category(tmp_path: Path, body: str) -> str:
    (tmp_path / "conf" / "category").mkdir(parents=True)
    (tmp_path / "conf" / "category" / "broken.yaml").write_text(body)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_a_category_naming_a_missing_dataset_names_the_file_and_entry(tmp_path):
    searchpath = _category(
        tmp_path,
        "# @package _global_\ndefaults:\n  - /dataset@category.datasets.nope: no_such_dataset\n"
        "category:\n  name: broken\n  label: BROKEN\n  models: [smollm2_135m]\n",
    )
    result = run_cli(searchpath, "category=broken", "mode=plan", f"paths.output_dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stdout
    assert "In 'category/broken': Could not find 'dataset/no_such_dataset'" in result.stdout


def test_an_empty_category_fails_naming_it(tmp_path):
    searchpath = _category(
        tmp_path, "# @package _global_\ncategory:\n  name: broken\n  label: BROKEN\n  models: [smollm2_135m]\n"
    )
    result = run_cli(searchpath, "category=broken", "mode=plan", f"paths.output_dir={tmp_path}")
    _assert_one_clear_error(result, "category 'broken' lists no datasets")


# --- rejected when the job starts, before any engine loads: the MLflow run ends FAILED with the error ---------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(["model.path=/nowhere"], "model.path=/nowhere has no config.json", id="no-model-path"),
        pytest.param(
            ["model=qwen25_7b"],
            "weights for Qwen/Qwen2.5-7B-Instruct are not present: not in the HF cache",
            id="weights-not-downloaded-offline",
        ),
        pytest.param(["model=llama31_70b"], "more than this machine's", id="model-bigger-than-all-memory"),
        pytest.param(["engine=distributed"], "engine=distributed needs a GPU", id="gpu-engine-without-gpu"),
        pytest.param(
            ["engine.tensor_parallel_size=4"],
            "engine=auto, engine.tensor_parallel_size=4 needs a GPU, but none was found",
            id="more-gpus-than-exist",
        ),
        pytest.param(  # on the CPU build's one-process executor this used to wait forever for ranks 1 and 2
            ["+engine.args.tensor_parallel_size=3"],
            "engine=auto, engine.args.tensor_parallel_size=3 needs a GPU, but none was found",
            id="tensor-parallel-engine-arg-on-cpu",
        ),
        pytest.param(
            ["engine=hf", "engine.tensor_parallel_size=2"],
            "engine.tensor_parallel_size=2 conflicts with engine=hf",
            id="hf-engine-with-tensor-parallel",
        ),
        pytest.param(
            ["engine.data_parallel_size=64"],
            "engine.data_parallel_size=64 asks for one CPU core per replica",
            id="more-replicas-than-devices",
        ),
        pytest.param(["model.dtype=float13"], "model.dtype='float13' is not one of", id="unknown-dtype"),
        pytest.param(
            ["engine._target_=no_such_package.MyEngine"],
            "engine._target_=no_such_package.MyEngine cannot be loaded",
            id="engine-class-not-importable",
        ),
        pytest.param(
            ["engine._target_=collections.OrderedDict"],
            "engine._target_=collections.OrderedDict is a class, but not an Engine",
            id="engine-class-not-an-engine",
        ),
    ],
)
def test_a_job_that_cannot_run_here_fails_before_loading_and_its_run_says_why(tmp_path, overrides, message):
    result = run_cli(*overrides, f"paths.output_dir={tmp_path}")
    _assert_failed_before_any_result(result, tmp_path, message)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param(
            "+engine.args.max_num_seq=4",
            "engine.args.max_num_seq is not a vLLM EngineArgs field (vLLM's `--max-num-seq`). "
            "Did you mean engine.args.max_num_seqs?",
            id="misspelled-engine-arg",
        ),
        pytest.param(
            "model.load_format=bogus",
            "The cpu engine could not load model smollm2_135m",
            id="engine-refuses-a-setting",
        ),
        pytest.param(  # what running out of memory at load looks like, without exhausting this machine
            "+engine.args.kv_cache_memory_bytes=1024",
            "ValueError: No available memory for the cache blocks",
            id="impossible-memory-setting",
        ),
    ],
)
def test_settings_the_engine_refuses_fail_before_any_request(tmp_path, default_model_dir, override, message):
    result = run_cli(override, "limit=1", *GEO_ONLY_SPATIAL, f"paths.output_dir={tmp_path}")
    _assert_failed_before_any_result(result, tmp_path, message)


FAULTY_ENGINES = """
from runner.engines.base import Engine


class Refusing(Engine):  # what an engine library does with a value it will not take
    @classmethod
    def from_config(cls, **_):
        raise ValueError("max_num_seqs=0 must be positive")


class Buggy(Engine):  # a plain bug: nothing the user's settings can fix
    @classmethod
    def from_config(cls, **_):
        return {}["tokenizer"]
"""


@pytest.mark.parametrize(
    ("engine", "code", "message"),
    [
        pytest.param(
            "Refusing",
            2,
            "The cpu engine could not load model tiny_llama (",
            id="a-setting",
        ),
        pytest.param(
            "Buggy",
            1,
            "KeyError: 'tokenizer'. This is not a problem with your settings but a bug in the runner or in a library",
            id="a-bug",
        ),
    ],
)
def test_an_engine_error_says_whether_the_settings_or_a_bug_caused_it(tmp_path, engine, code, message):
    (tmp_path / "faulty_engines.py").write_text(FAULTY_ENGINES)
    out = tmp_path / "out"
    job = [CHEAPEST_JOB, "engine=cpu", f"engine._target_=faulty_engines.{engine}", "limit=1", *GEO_ONLY_SPATIAL]
    result = run_cli(*job, f"paths.output_dir={out}", env={"PYTHONPATH": str(tmp_path)})
    error = _assert_one_clear_error(result, message, code=code)
    ((status, tag),) = _statuses(out, "text_geospatial")
    assert status == "FAILED" and ("ValueError" if engine == "Refusing" else "KeyError") in tag
    if engine == "Refusing":
        assert "max_num_seqs=0 must be positive. Check the model's settings" in error
        return
    (log,) = out.glob("runs/*/*/runner.log")
    assert f"the full traceback is in {log}" in error
    assert "Traceback (most recent call last)" in log.read_text() and "KeyError: 'tokenizer'" in log.read_text()


SERVER_CASES = {  # engine=vllm_server plus: the one paragraph it ends with
    "engine.url=http://127.0.0.1:9/v1": "engine.url=http://127.0.0.1:9/v1 cannot be reached (no connection)",
    "+engine.args.max_num_seqs=-1": "`vllm serve` exited with code 1 while starting",  # its own start fails
}


@pytest.mark.slow
@pytest.mark.parametrize("override", SERVER_CASES)
def test_a_vllm_server_that_cannot_serve_fails_before_any_request_and_leaves_no_process(tmp_path, override):
    import psutil

    # The job's temporary files in a folder of its own: `vllm serve --config <TMPDIR>/vllm-serve-*.yaml` then
    # names it, which tells the servers this job started from another test's (pytest-xdist runs two at once).
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_cli(
        "engine=vllm_server", override, "limit=1", *GEO_ONLY_SPATIAL, f"paths.output_dir={tmp_path}",
        env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    _assert_failed_before_any_result(result, tmp_path, SERVER_CASES[override])
    if "max_num_seqs" in override:  # the server was started, with its config among the job's own files
        (log,) = tmp_path.glob("runs/*/*/runner.log")
        assert f"--config {scratch}/vllm-serve-" in log.read_text()
    # No server this job started outlives it.
    servers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if "api_server.entry" in " ".join(p.info["cmdline"] or ()) and str(scratch) in " ".join(p.info["cmdline"])
    ]
    assert not servers


def test_a_report_with_no_runs_says_where_it_looked(tmp_path):
    result = run_cli("mode=report", f"paths.output_dir={tmp_path}")
    _assert_one_clear_error(result, f"No runs to report in sqlite:///{tmp_path}/mlflow.db")


# --- data ----------------------------------------------------------------------------------------------------


def _gsm8k_from(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_cli(
        "category=math", "limit=1", f"category.datasets.gsm8k.local.test={path}", f"paths.output_dir={tmp_path}"
    )


def test_a_malformed_jsonl_line_is_named_by_file_and_line(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "2+2?", "answer": #### 4}\n')
    result = _gsm8k_from(data, tmp_path)
    _assert_one_clear_error(result, f"{data}, line 3: not valid JSON")
    assert _statuses(tmp_path, "math")[0][0] == "FAILED"
    _assert_nothing_looks_like_a_result(tmp_path)


def test_non_utf8_data_is_named_with_the_fix(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_bytes('{"question": "caf\xe9?", "answer": "#### 2"}\n'.encode("latin-1"))
    _assert_one_clear_error(_gsm8k_from(data, tmp_path), f"{data}, line 1: not UTF-8 (byte 0xe9)")
    assert _statuses(tmp_path, "math")[0][0] == "FAILED"


def test_an_empty_data_file_is_refused(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("\n")
    _assert_one_clear_error(_gsm8k_from(data, tmp_path), "is empty: no samples to evaluate")


@pytest.mark.parametrize("what", ["missing", "a folder"])
def test_a_missing_or_unreadable_data_file_is_a_recorded_skip(tmp_path, what):
    # Root reads any file whatever its mode, so "unreadable" is a folder where a file belongs.
    data = tmp_path / "absent.jsonl" if what == "missing" else tmp_path
    result = _gsm8k_from(data, tmp_path)
    # The dataset is skipped with its reason; with no other dataset ready, the job has nothing to run.
    _assert_one_clear_error(result, f"gsm8k: dataset.local file(s) missing: {data}")
    assert "None of category 'math''s datasets can run here" in result.stdout
    assert _statuses(tmp_path, "math")[0][0] == "FAILED"


@pytest.mark.slow
def test_a_task_yaml_error_names_the_file_and_line_and_the_other_datasets_still_run(tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(PROJECT_ROOT / "adapters" / "tasks", tasks)
    broken = tasks / "text_geospatial" / "spatial_reasoning.yaml"
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([*lines, "doc_to_text: [unclosed"]) + "\n")
    result = run_cli(
        f"paths.tasks_dir={tasks}",
        "limit=1",
        CHEAPEST_JOB,
        *GEO_ONLY_SPATIAL[:-1],  # spatial_reasoning (broken) and ner_locations (fine) stay
        "+category.datasets.ner_locations.gen_kwargs.max_gen_toks=8",
        f"paths.output_dir={tmp_path}",
    )
    error = _assert_one_clear_error(result, "1 of 2 datasets failed and the others were scored and logged")
    assert f"{broken}, line " in error and "expected ',' or ']'" in error  # the YAML parser's own words
    ((status, tag),) = _statuses(tmp_path, "text_geospatial")
    assert status == "FAILED" and "spatial_reasoning" in tag
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    assert "ner_locations/score" in run.data.metrics  # the healthy dataset's result was kept
    assert run.data.tags["failed_datasets"] == "spatial_reasoning"


def test_an_unreachable_hub_is_found_once_and_its_datasets_are_skipped_saying_so(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_ENDPOINT": dead}
    env |= dict.fromkeys(("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"), "")  # direct
    result = run_cli("category=math", "limit=1", f"paths.output_dir={tmp_path}", env=env, timeout=300)
    error = _assert_one_clear_error(result, "None of category 'math''s datasets can run here")
    assert "gsm8k: not available offline: openai/gsm8k is not in the HF cache" in error
    assert f"the hub ({dead}) cannot be reached" in error
    assert "Retrying in" not in result.stdout  # no dataset waited on huggingface_hub's retries
    assert _statuses(tmp_path, "math")[0][0] == "FAILED"


# --- the output folder ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, ro) -> a fresh tmpfs of that size (root only); unmounted afterwards."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_output_folder_fails_before_anything_is_written(small_disk):
    disk = small_disk("64k", read_only=True)
    result = run_cli("mode=plan", f"paths.output_dir={disk}/outputs")
    _assert_one_clear_error(result, f"paths.output_dir={disk}/outputs is not writable (Read-only file system)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hydra.run.dir=/proc/runner-job"], "hydra.run.dir=/proc/runner-job is not writable"),
        (["-m", "hydra.sweep.dir=/proc/runner-sweep"], "hydra.sweep.dir=/proc/runner-sweep is not writable"),
    ],
)
def test_a_job_or_sweep_folder_that_cannot_be_made_is_one_error(tmp_path, args, message):
    result = run_cli(*args, "mode=plan", f"paths.output_dir={tmp_path}")
    _assert_one_clear_error(result, message)


def test_a_full_output_folder_fails_before_the_job_starts(small_disk):
    disk = small_disk("1m")
    result = run_cli(f"paths.output_dir={disk}/outputs")
    _assert_one_clear_error(result, "MB free, less than paths.min_free_mb=200")
    assert not (disk / "outputs" / "mlflow.db").exists()


def test_an_output_folder_under_a_file_fails_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("mode=plan", f"paths.output_dir={tmp_path}/file/outputs")
    _assert_one_clear_error(result, "is not writable (Not a directory)")


@pytest.mark.slow
def test_a_disk_filling_up_mid_job_ends_the_run_failed_with_one_message(small_disk, tmp_path, default_model_dir):
    disk = small_disk("100k")  # room for the job's folder, not for its response cache and results
    store = tmp_path / "store"
    result = run_cli(
        "limit=1",
        CHEAPEST_JOB,
        "cache=true",  # the response cache is one of the writes that fill the disk
        *SHORT_ANSWERS,
        f"paths.output_dir={disk}/outputs",
        "paths.min_free_mb=0",
        f"tracking.uri=sqlite:///{store}/mlflow.db",
    )
    error = _assert_one_clear_error(result, "rerun the same command to compute only the rest")
    assert "No space left on device" in error or "database or disk is full" in error  # whichever write hit it
    assert [s for s, _ in _statuses(store, "text_geospatial")] == ["FAILED"]


# --- Ctrl-C, and the signals a scheduler or a closed terminal sends ---------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_model_load_stops_the_job_with_exit_130_and_ends_its_run_killed(tmp_path, default_model_dir):
    # verbose=true: the moment to press Ctrl-C is the engine's own log line.
    job = LiveCli("limit=2", "tracking.system_metrics=false", "verbose=true", f"paths.output_dir={tmp_path}")
    try:
        job.wait_until(lambda: "with vLLM (" in job.output)
        job.process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert job.finish(120) == 130
    finally:
        job.stop()
    assert "interrupted (Ctrl-C or SIGINT): the job stopped" in job.output, job.output[-3000:]
    assert "rerun the same command" in job.output, job.output[-3000:]
    assert "Traceback" not in job.output, job.output[-3000:]
    assert _statuses(tmp_path, "text_geospatial") == [("KILLED", "interrupted (Ctrl-C or SIGINT)")]
    _assert_nothing_looks_like_a_result(tmp_path)


def test_sighup_in_a_sweep_ends_the_current_job_killed_and_stops_the_sweep_saying_so(tmp_path):
    # A closed terminal (or ssh session) sends SIGHUP. A sweep of two cheap jobs, stopped during the first.
    sweep = tmp_path / "sweep"
    job = LiveCli(
        "-m",
        CHEAPEST_JOB,
        "verbose=true",
        "seed=1,2",
        f"paths.output_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    try:
        job.wait_until(lambda: "engine: generating" in job.output)
        job.process.send_signal(signal.SIGHUP)
        assert job.finish(120) == 129  # 128 + SIGHUP
        assert_no_process_left(job.process.pid)
    finally:
        job.stop()
    assert "terminated (SIGHUP): the sweep stops at this job" in job.output, job.output[-3000:]
    assert "Traceback" not in job.output, job.output[-3000:]
    (first,) = sweep.glob("0_*/job.json")
    assert json.loads(first.read_text())["status"] == "KILLED"
    assert not list(sweep.glob("1_*"))  # the next job did not start
    assert _statuses(tmp_path, "text_geospatial") == [("KILLED", "terminated (SIGHUP)")]
