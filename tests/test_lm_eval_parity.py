"""Our numbers are lm-eval's numbers: the same model, task and settings through `python -m runner` and
through the `lm_eval` CLI give the same prompts, answers and scores, and the counts the runner reports
mean what they say.

Both sides run the default model in fp32 on the transformers engine (lm-eval's `hf` model), one request
at a time (no padding), with lm-eval's default seeds on the CLI side (`--seed` left alone):
- gsm8k, lm-eval's builtin task (5-shot, two filters), from small local files written here, through the
  runner's `category.datasets.gsm8k.local` and the CLI's task YAML path;
- spatial_reasoning, the project's own task with per-subgroup metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, cli_env, run_cli

pytestmark = pytest.mark.slow

TRAIN = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
    ("A box holds 6 eggs. How many eggs are in 2 boxes?", "6 * 2 = 12\n#### 12"),
    ("Sara had 10 coins and spent 4. How many are left?", "10 - 4 = 6\n#### 6"),
    ("A train travels 60 km each hour for 3 hours. How far does it go?", "60 * 3 = 180\n#### 180"),
    ("There are 5 birds and 2 fly away. How many remain?", "5 - 2 = 3\n#### 3"),
    ("Each pen costs 2 dollars. What do 8 pens cost?", "2 * 8 = 16\n#### 16"),
    ("Ann reads 12 pages a day. How many pages in 5 days?", "12 * 5 = 60\n#### 60"),
    ("A class has 14 girls and 11 boys. How many pupils?", "14 + 11 = 25\n#### 25"),
    ("Half of 30 students walk home. How many walk?", "30 / 2 = 15\n#### 15"),
    ("Ben had 9 marbles and won 9 more. How many now?", "9 + 9 = 18\n#### 18"),
    ("A farmer has 4 rows of 7 trees. How many trees?", "4 * 7 = 28\n#### 28"),
    ("Mia saved 50 dollars and spent 35. What is left?", "50 - 35 = 15\n#### 15"),
]
TEST = [
    ("Leo has 8 cards and gets 5 more. How many cards does he have?", "8 + 5 = 13\n#### 13"),
    ("A bag has 20 sweets shared by 4 children. How many each?", "20 / 4 = 5\n#### 5"),
    ("Kim runs 3 km a day for 7 days. How far does she run?", "3 * 7 = 21\n#### 21"),
]
MAX_GEN = 32  # both sides: enough to see the answers diverge if prompts did, cheap on a CPU


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return path


def lm_eval_cli(model_dir: Path, out: Path, tasks: str, *extra: str) -> None:
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--batch_size", "1",
        "--tasks", tasks, "--apply_chat_template", "--log_samples", "--output_path", str(out), *extra,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def samples(folder: Path, task: str) -> dict[tuple[int, str], dict]:
    """(doc_id, filter) -> lm-eval's logged sample, from the samples_<task>_*.jsonl under `folder`."""
    (path,) = folder.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["doc_id"], row["filter"]): row for row in rows}


def results(folder: Path) -> dict:
    (path,) = folder.rglob("results_*.json")
    return json.loads(path.read_text())


def run_folder(output_dir: Path) -> Path:
    (telemetry,) = (output_dir / "runs").rglob("telemetry.json")
    return telemetry.parent


def assert_same(runner_dir: Path, cli_dir: Path, task: str) -> tuple[dict, dict]:
    ours, theirs = samples(runner_dir, task), samples(cli_dir, task)
    assert ours.keys() == theirs.keys()
    for key, row in theirs.items():
        assert ours[key]["arguments"] == row["arguments"], f"prompt of doc {key} differs"
        assert ours[key]["resps"] == row["resps"], f"answer of doc {key} differs"
        assert ours[key]["filtered_resps"] == row["filtered_resps"]
    ours_results, theirs_results = results(runner_dir)["results"][task], results(cli_dir)["results"][task]
    scores = {k: v for k, v in theirs_results.items() if k != "alias"}
    assert {k: ours_results[k] for k in scores} == scores
    return ours, theirs


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory, default_model_dir):
    """The runner's job and the lm_eval CLI on the same local gsm8k files."""
    import lm_eval

    from runner.job.evaluate import local_task_yaml

    base = tmp_path_factory.mktemp("gsm8k")
    train, test = write_jsonl(base / "train.jsonl", TRAIN), write_jsonl(base / "test.jsonl", TEST)
    runner_out = base / "runner"
    job = [
        "category=math", "engine=hf", "engine.hf.batch_size=1", f"paths.output_dir={runner_out}",
        f"category.datasets.gsm8k.local.test={test}", f"category.datasets.gsm8k.local.train={train}",
        f"+category.datasets.gsm8k.gen_kwargs.max_gen_toks={MAX_GEN}", "tracking.system_metrics=false",
    ]  # fmt: skip
    first = run_cli(*job)
    assert first.returncode == 0, first.stdout[-3000:]
    builtin = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    task_yaml = local_task_yaml("gsm8k", builtin, {"train": str(train), "test": str(test)}, "json", base / "cli")
    cli_out = base / "cli_out"
    lm_eval_cli(default_model_dir, cli_out, str(task_yaml), "--gen_kwargs", f"max_gen_toks={MAX_GEN}")
    return {"job": job, "runner": run_folder(runner_out), "cli": cli_out, "first": first.stdout}


def test_few_shot_multi_filter_builtin_task_equals_lm_eval(gsm8k):
    ours, _ = assert_same(gsm8k["runner"], gsm8k["cli"], "gsm8k")
    assert {f for _, f in ours} == {"strict-match", "flexible-extract"}
    prompt = ours[(0, "strict-match")]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.count("Question:") == 6  # five few-shot examples drawn with lm-eval's seed, then the doc


def test_requests_count_once_per_doc_under_two_filters(gsm8k):
    telemetry = json.loads((gsm8k["runner"] / "telemetry.json").read_text())
    assert telemetry["requests_total"] == len(TEST)  # not 2x: one request per doc, whatever the filters
    assert telemetry["requests_from_cache"] == 0
    assert "requests: 3, 0 from the response cache" in gsm8k["first"]
    # The rerun is answered from the cache: every request, counted once ...
    again = run_cli(*gsm8k["job"])
    assert again.returncode == 0, again.stdout[-3000:]
    assert "requests: 3, 3 from the response cache" in again.stdout
    # ... and it reports the throughput measured when those answers were generated, marked as such.
    assert "throughput (from the response cache, measured when those answers were generated)" in again.stdout
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{gsm8k['runner'].parents[2]}/mlflow.db")
    first, rerun = sorted(
        client.search_runs([client.get_experiment_by_name("math").experiment_id]), key=lambda r: r.info.start_time
    )
    assert first.data.tags["throughput_source"] == "engine"
    assert rerun.data.tags["throughput_source"] == "response_cache"
    measured = first.data.metrics["output_tokens_per_s"]
    assert rerun.data.metrics["output_tokens_per_s"] == pytest.approx(measured, rel=1e-6)
    assert rerun.data.metrics["engine_loaded"] == 0.0  # nothing was generated again


def test_a_builtin_task_runs_offline_from_local_files_and_the_unready_dataset_is_a_recorded_skip(gsm8k):
    from mlflow import MlflowClient

    assert "skipped hendrycks_math500: not available offline" in gsm8k["first"]
    client = MlflowClient(f"sqlite:///{gsm8k['runner'].parents[2]}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("math").experiment_id], order_by=["start_time"])
    run = runs[0]  # the first job (a test above reruns it from the cache)
    assert run.info.status == "FINISHED"
    assert "gsm8k/exact_match_strict-match" in run.data.metrics and run.data.metrics["requests"] == len(TEST)
    assert run.data.tags["model_in_category"] == "false"
    assert "hendrycks_math500" in run.data.tags["skipped_datasets"]


def test_results_file_names_the_weights_loaded(gsm8k, default_model_dir):
    config = results(gsm8k["runner"])["config"]
    args = config["model_args"]
    args = dict(part.split("=", 1) for part in args.split(",")) if isinstance(args, str) else args
    assert args["pretrained"] == str(default_model_dir)  # the converted folder, not the hub id
    assert args["load_format"] == "auto" and args["weights_hash"].split(":")[0] in ("blake3", "sha256")


def test_own_task_with_subgroup_metrics_equals_lm_eval(tmp_path, default_model_dir):
    limit = 4
    runner_out = tmp_path / "runner"
    job = run_cli(
        "category=text_geospatial", "engine=hf", "engine.hf.batch_size=1", f"limit={limit}",
        f"paths.output_dir={runner_out}", "tracking.system_metrics=false", "summary=full",
        "~category.datasets.coordinate_processing", "~category.datasets.address_parsing",
        "~category.datasets.location_ner", "~category.datasets.ner_locations",
    )  # fmt: skip
    assert job.returncode == 0, job.stdout[-3000:]
    cli_out = tmp_path / "cli"
    lm_eval_cli(
        default_model_dir, cli_out, "spatial_reasoning", "--include_path", str(PROJECT_ROOT / "adapters" / "tasks"),
        "--limit", str(limit),
    )  # fmt: skip
    folder = run_folder(runner_out)
    _, theirs = assert_same(folder, cli_out, "spatial_reasoning")
    # Each metric's n is the docs lm-eval scored it on: a subgroup metric counts its own docs only.
    scored: dict[str, int] = {}
    for row in theirs.values():
        for metric in row["metrics"]:
            scored[metric] = scored.get(metric, 0) + 1
    assert scored["acc"] == limit and any(n < limit for n in scored.values())
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{runner_out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    logged = {k.split("/", 1)[1][: -len("_n")]: v for k, v in run.data.metrics.items() if k.endswith("_n")}
    assert logged == {metric: float(n) for metric, n in scored.items()}
    for metric, n in scored.items():  # and the summary prints the same n beside each metric
        assert any(line.split()[1:2] == [metric] and line.split()[-1] == str(n) for line in job.stdout.splitlines())


ARC = [  # ARC-format rows (allenai/ai2_arc): lm-eval's arc_easy scores each choice by log-likelihood
    ("Which of these is a source of light?", ["the Sun", "a rock", "a shadow", "the soil"], "A"),
    ("What do plants need to make food?", ["sand", "sunlight and water", "metal", "plastic bags"], "B"),
    ("Which state of matter is ice?", ["gas", "liquid", "solid", "plasma"], "C"),
    ("What tool measures temperature?", ["a ruler", "a scale", "a clock", "a thermometer"], "D"),
    ("Which animal lays eggs?", ["a chicken", "a dog", "a cat", "a horse"], "A"),
    ("What pulls objects toward the Earth?", ["magnetism", "gravity", "friction", "light"], "B"),
]


def test_a_multiple_choice_task_through_the_runner_on_both_engines_equals_the_lm_eval_cli(tmp_path, default_model_dir):
    """lm-eval's own arc_easy on local files: `python -m runner` on the transformers engine and on vLLM's CPU build
    (one pass per doc's context, prefix cache) against `lm_eval --model hf`: the same contexts and continuations,
    the same acc and acc_norm on every doc, log-likelihoods within 1e-4 (transformers) and 1e-3 (vLLM)."""
    import lm_eval

    from runner.job.evaluate import local_task_yaml

    rows = [
        {"id": f"q{i}", "question": q, "choices": {"text": c, "label": list("ABCD")}, "answerKey": a}
        for i, (q, c, a) in enumerate(ARC)
    ]
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for engine in ("hf", "cpu"):
        out = tmp_path / engine
        job = run_cli(
            "category=science", "~category.datasets.gpqa_diamond", "~category.datasets.arc_challenge",
            "+dataset@category.datasets.arc_easy=arc_easy", f"category.datasets.arc_easy.local.test={data}",
            f"engine={engine}", "engine.hf.batch_size=1", f"paths.output_dir={out}", "tracking.system_metrics=false",
        )  # fmt: skip
        assert job.returncode == 0, job.stdout[-3000:]
        runs[engine] = run_folder(out)
    # The runner gave lm-eval only the test file: arc_easy's train and validation splits are not asked for.
    builtin = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    task_yaml = local_task_yaml("arc_easy", builtin, {"test": str(data)}, "json", tmp_path / "cli_task")
    cli_out = tmp_path / "cli"
    lm_eval_cli(default_model_dir, cli_out, str(task_yaml))
    theirs = samples(cli_out, "arc_easy")
    for engine, tolerance in (("hf", 1e-4), ("cpu", 1e-3)):
        ours = samples(runs[engine], "arc_easy")
        assert ours.keys() == theirs.keys() and len(ours) == len(ARC)
        for key, row in theirs.items():
            assert ours[key]["arguments"] == row["arguments"], f"{engine}: contexts or continuations of doc {key}"
            assert (ours[key]["acc"], ours[key]["acc_norm"]) == (row["acc"], row["acc_norm"]), (engine, key)
            for (a,), (b,) in zip(ours[key]["resps"], row["resps"], strict=True):
                assert float(a[0]) == pytest.approx(float(b[0]), abs=tolerance), (engine, key)
                assert a[1] == b[1], (engine, key)  # greedy flags
        ours_scores, theirs_scores = (results(folder)["results"]["arc_easy"] for folder in (runs[engine], cli_out))
        for metric in ("acc,none", "acc_norm,none"):
            assert ours_scores[metric] == theirs_scores[metric], (engine, metric)
