"""humaneval_offline: offline data, pass@k, answer extraction, sandboxed scoring, and lm-eval loading."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import load_by_path
from test_sandbox import caller_kills  # noqa: F401 - the fixture: runs the caller had to kill

from adapters.sandbox import SandboxError, SandboxResult

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "adapters" / "tasks"
TASK_DIR = TASKS_DIR / "code"


utils = load_by_path("humaneval_offline_utils", TASK_DIR / "utils.py")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return utils.load_records()


@pytest.fixture(scope="module")
def by_id(records) -> dict[str, dict]:
    return {r["task_id"]: r for r in records}


# --------------------------------------------------------------------------- data and pass@k


def test_data_is_the_packaged_humaneval(records):
    assert utils.data_path().name == "HumanEval.jsonl.gz"
    assert len(records) == 164
    assert [r["task_id"] for r in records] == [f"HumanEval/{i}" for i in range(164)]
    assert set(records[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}


def test_load_returns_a_test_split():
    dataset = utils.load(version=1.0, anything="ignored")  # lm-eval passes metadata as kwargs
    assert list(dataset) == ["test"]
    assert dataset["test"].num_rows == 164


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_pass_at_k_matches_the_combinatorial_definition(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert utils.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_known_values_and_bad_input():
    assert utils.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert utils.pass_at_k(10, 0, 10) == 0.0
    assert utils.pass_at_k(10, 1, 10) == 1.0
    assert utils.pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    for bad in ((5, 6, 1), (5, 1, 0), (5, 1, 6), (5, -1, 1)):
        with pytest.raises(ValueError):
            utils.pass_at_k(*bad)


def test_yaml_declares_every_reported_metric_and_the_unsafe_flag():
    text = (TASK_DIR / "humaneval_offline.yaml").read_text()
    # `!function` tags are lm-eval's; a plain loader that ignores them is enough to read the keys.
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda _loader, node: node.value)
    config = yaml.load(text, Loader=loader)
    assert config["task"] == "humaneval_offline" and config["tag"] == ["coding"]
    assert config["unsafe_code"] is True
    assert [m["metric"] for m in config["metric_list"]] == [f"pass@{k}" for k in utils.K_VALUES]
    assert set(config["generation_kwargs"]["until"]) <= set(utils.STOP_SEQUENCES)


# --------------------------------------------------------------------------- extraction

CANONICAL_0 = """\
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True

    return False
"""
FULL_0 = "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + (
    CANONICAL_0
)
FLUSH_LEFT_0 = textwrap.dedent(CANONICAL_0)

EXTRACTION_CASES = {
    "continuation": CANONICAL_0,
    "continuation_then_next_def": CANONICAL_0 + "\n\ndef main():\n    raise SystemExit(1)\n",
    "continuation_then_comment_and_test": CANONICAL_0 + "\n# test\nassert False\n",
    "continuation_then_main_guard": CANONICAL_0 + "\nif __name__ == '__main__':\n    raise SystemExit(1)\n",
    "continuation_then_prose": CANONICAL_0 + "\nThis checks every pair, so it is O(n^2).",
    "fenced_full_def_with_prose": f"Here is the solution:\n\n```python\n{FULL_0}```\n\nIt compares every pair.",
    "fenced_full_def_without_imports": f"```python\n{FULL_0.split(chr(10), 3)[3]}```",
    "fenced_full_def_unterminated": f"Sure!\n```python\n{FULL_0}",
    "fenced_full_def_with_examples": f"```python\n{FULL_0}\nprint(has_close_elements([1.0], 0.5))\n"
    "assert has_close_elements([1.0, 1.1], 0.5) is False\nif __name__ == '__main__':\n    raise SystemExit(1)\n```",
    "fenced_body_indented": f"```python\n{CANONICAL_0}```",
    "fenced_body_flush_left": f"```python\n{FLUSH_LEFT_0}```",
    "second_fence_has_the_def": f"Usage:\n```\nhas_close_elements([1.0], 0.5)\n```\nCode:\n```py\n{FULL_0}```",
    "plain_full_def_with_prose": f"The function:\n\n{FULL_0}\nThis runs in O(n^2).",
    "full_def_with_helper": "```python\ndef _close(a, b, t):\n    return abs(a - b) < t\n\n\n"
    "def has_close_elements(numbers, threshold):\n    return any(_close(a, b, threshold) "
    "for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n```",
    "think_block_then_fence": "<think>\ndef has_close_elements(x, y):\n    return None\n</think>\n"
    f"```python\n{FULL_0}```",
    "prose_then_indented_body": "Complete the body:\n" + CANONICAL_0,
}


@pytest.fixture(scope="module")
def extraction_results(by_id) -> dict[str, SandboxResult]:
    # One parallel batch for all cases; each case is then asserted on its own.
    doc = by_id["HumanEval/0"]
    names = list(EXTRACTION_CASES)
    outcomes = utils.score(doc, [EXTRACTION_CASES[n] for n in names])
    return dict(zip(names, outcomes, strict=True))


@pytest.mark.parametrize("case", list(EXTRACTION_CASES))
def test_extraction_case_passes_in_the_sandbox(case, extraction_results):
    result = extraction_results[case]
    assert result.passed, (case, result.status, result.reason, result.stderr_tail[-800:])


def test_extraction_shapes():
    fenced = utils.extract_completion(EXTRACTION_CASES["fenced_full_def_with_examples"], "has_close_elements")
    assert "print(" not in fenced and "assert" not in fenced and "__main__" not in fenced
    assert fenced.startswith("\nfrom typing import List\n")
    body = utils.extract_completion(EXTRACTION_CASES["continuation_then_next_def"], "has_close_elements")
    assert body == CANONICAL_0 + "\n"  # cut where lm-eval's "\ndef" stop sequence would cut
    assert utils.extract_completion(FLUSH_LEFT_0, "has_close_elements") == textwrap.indent(FLUSH_LEFT_0, "    ")
    assert utils.extract_completion("", "f") == ""
    assert utils.extract_completion("I cannot help with that.", "f") == ""


@pytest.mark.parametrize(
    "response",
    ["", "    return True\n", "    return None\n", "```python\ndef has_close_elements(a, b):\n    retur\n```"],
    ids=["empty", "wrong", "none", "syntax-error"],
)
def test_wrong_answers_fail(response, by_id):
    assert utils.process_results(by_id["HumanEval/0"], [response]) == {"pass@1": 0.0}


# --------------------------------------------------------------------------- hostile completions
# Same safety rule as tests/test_sandbox.py: no body may touch any path at all.

HOSTILE_BODIES = {
    "exit_before_checks": "    import os\n    os._exit(0)\n",
    "sys_exit_zero": "    import sys\n    sys.exit(0)\n",
    "infinite_loop": "    while True:\n        pass\n",
    "fork_bomb": "    import os\n    while True:\n        try:\n            os.fork()\n"
    "        except OSError:\n            pass\n",
    "memory_hog": "    return len(bytearray(50 * 1024**3)) > 0\n",
    "stdout_flood": "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
    "segfault": "    import ctypes\n    ctypes.string_at(0)\n",
    "recursion_bomb": "    import sys\n    sys.setrecursionlimit(10**8)\n    def f(n):\n        return f(n + 1) + 1\n"
    "    return f(0)\n",
    "ignore_signals": "    import signal\n    for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU):\n"
    "        signal.signal(s, signal.SIG_IGN)\n    while True:\n        pass\n",
    "kill_parent": "    import os\n    os.kill(os.getppid(), 9)\n    os.kill(1, 9)\n    return True\n",
}


def test_hostile_completions_score_zero_and_the_harness_survives(by_id, caller_kills):  # noqa: F811
    doc = by_id["HumanEval/0"]
    names = list(HOSTILE_BODIES)
    outcomes = utils.score(doc, [HOSTILE_BODIES[n] for n in names], timeout_s=3)
    assert caller_kills == []  # bounded: every run ended by the sandbox's own limits, none had to be killed
    for name, result in zip(names, outcomes, strict=True):
        assert not result.passed, (name, result)
    statuses = dict(zip(names, (r.status for r in outcomes), strict=True))
    assert statuses["infinite_loop"] == statuses["ignore_signals"] == "timeout"
    assert statuses["stdout_flood"] == "output_limit"


# --------------------------------------------------------------------------- all 164 through the sandbox


def test_canonical_solutions_pass_and_empty_completions_fail(records):
    # The scorer's own path (build_program -> sandbox), batched in parallel; process_results runs
    # one doc at a time and is exercised through lm-eval below.
    canonical = utils.check_completions([utils.build_program(r, r["canonical_solution"]) for r in records])
    failures = [(r["task_id"], o.status, o.reason) for r, o in zip(records, canonical, strict=True) if not o.passed]
    assert failures == []
    assert sum(utils.pass_at_k(1, int(o.passed), 1) for o in canonical) / len(records) == 1.0
    empty = utils.check_completions([utils.build_program(r, "") for r in records])
    assert [o.status for o in empty] == ["failed"] * len(records)


def test_a_broken_sandbox_stops_the_run_instead_of_scoring_zero(by_id, monkeypatch):
    broken = SandboxResult("error", None, "", "", 0.0, "sandbox setup failed: test")
    monkeypatch.setattr(utils, "check_completions", lambda programs, **_: [broken for _ in programs])
    with pytest.raises(SandboxError, match="sandbox setup failed"):
        utils.process_results(by_id["HumanEval/0"], [["    return True\n"]])


# --------------------------------------------------------------------------- through lm-eval


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def test_lm_eval_loads_the_task_offline(task_manager):
    from lm_eval.tasks import get_task_dict

    assert "humaneval_offline" in task_manager.all_tasks
    task = get_task_dict(["humaneval_offline"], task_manager)["humaneval_offline"]
    assert task.UNSAFE_CODE is True
    docs = list(task.test_docs())
    assert len(docs) == 164
    doc = docs[0]
    assert task.doc_to_text(doc) == doc["prompt"]
    assert task.process_results(doc, [[doc["canonical_solution"]]]) == {"pass@1": 1.0}
    assert task.process_results(doc, [doc["canonical_solution"]]) == {"pass@1": 1.0}  # take_first shape


class _CannedLM:
    """A stand-in model: answers every generate_until request from a fixed function of the prompt."""

    def __new__(cls, answer):
        from lm_eval.api.model import LM

        class Canned(LM):
            def generate_until(self, requests, disable_tqdm=False):
                return [answer(r.args[0], i) for i, r in enumerate(requests)]

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Canned()


def test_lm_eval_refuses_without_the_opt_in_and_scores_with_it(task_manager, records):
    from lm_eval import simple_evaluate

    canonical = {r["prompt"]: r["canonical_solution"] for r in records}
    model = _CannedLM(lambda prompt, _i: canonical[prompt])
    with pytest.raises(ValueError, match="confirm_run_unsafe_code"):
        simple_evaluate(model=model, tasks=["humaneval_offline"], task_manager=task_manager, limit=2)
    results = simple_evaluate(
        model=model, tasks=["humaneval_offline"], task_manager=task_manager, limit=4, confirm_run_unsafe_code=True
    )
    assert results["results"]["humaneval_offline"]["pass@1,none"] == 1.0


def test_lm_eval_repeats_give_pass_at_k(task_manager, records):
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import get_task_dict

    canonical = {r["prompt"]: r["canonical_solution"] for r in records}
    # Per doc, 5 samples in a row: right, wrong, wrong, wrong, wrong -> c=1 of n=5.
    model = _CannedLM(lambda prompt, i: canonical[prompt] if i % 5 == 0 else "    return None\n")
    tasks = get_task_dict(["humaneval_offline"], task_manager)
    tasks["humaneval_offline"].set_config("repeats", 5)
    results = evaluate(model, tasks, limit=2, confirm_run_unsafe_code=True)
    metrics = results["results"]["humaneval_offline"]
    assert metrics["pass@1,none"] == pytest.approx(0.2)
    assert metrics["pass@5,none"] == pytest.approx(1.0)
    assert "pass@10,none" not in metrics  # k > n is not reported
