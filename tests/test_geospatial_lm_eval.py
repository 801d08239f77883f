"""The text_geospatial tasks inside lm-eval 0.4.13: loading by tag from any working
directory, per-group metrics that only some docs report, corpus-level micro
aggregation through the real evaluator, and (slow) the plain lm_eval CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import load_by_path

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "adapters" / "tasks"
TASK_DIR = TASKS_DIR / "text_geospatial"
TASK_NAMES = ("coordinate_processing", "spatial_reasoning", "address_parsing", "location_ner", "ner_locations")
HEADLINE = {
    "coordinate_processing": "acc",
    "spatial_reasoning": "acc",
    "address_parsing": "f1",
    "location_ner": "f1",
    "ner_locations": "loc_f1",
}
# metadata.version of each task YAML: lm-eval reports it per task in results["versions"].
VERSIONS = {
    "coordinate_processing": 3.0,
    "spatial_reasoning": 2.0,
    "address_parsing": 2.0,
    "location_ner": 2.0,
    "ner_locations": 2.0,
}
PROCESS = {
    "coordinate_processing": "process_results",
    "spatial_reasoning": "process_spatial_reasoning",
    "address_parsing": "process_address_parsing",
    "location_ner": "process_location_ner",
    "ner_locations": "process_ner_locations",
}


utils = load_by_path("text_geospatial_utils_lm_eval_test", TASK_DIR / "utils.py")


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory) -> Iterator:
    # No task path may depend on the working directory or the hub. One manager
    # for the module: indexing lm-eval's own task folder takes seconds.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(tmp_path_factory.mktemp("elsewhere"))
        import lm_eval.tasks

        yield lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))


def _reply_script(pattern: Callable[[dict, int], str]):
    """An lm-eval LM that replies with pattern(doc, doc_id)."""
    from lm_eval.api.model import LM

    class ScriptedLM(LM):
        def generate_until(self, requests):
            return [pattern(request.doc, request.doc_id) for request in requests]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    return ScriptedLM()


def _evaluate(task_manager, task: str, pattern: Callable[[dict, int], str], limit: int) -> tuple[dict, list[dict]]:
    from lm_eval import evaluator

    out = evaluator.simple_evaluate(
        model=_reply_script(pattern), tasks=[task], task_manager=task_manager, limit=limit, log_samples=False
    )
    return out["results"][task], utils.load_records(task)[:limit]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tag_loads_all_five_tasks_with_their_metrics(task_manager):
    import lm_eval.tasks

    assert "text_geospatial" in task_manager.all_tags
    tasks = lm_eval.tasks.get_task_dict(["text_geospatial"], task_manager)
    assert set(tasks) == set(TASK_NAMES)
    for name, task in tasks.items():
        assert task.config.custom_dataset is not None  # frozen JSONL, no hub
        docs = list(task.test_docs())
        assert len(docs) == 500
        doc = docs[0]
        assert task.doc_to_text(doc) == doc["prompt"] and task.doc_to_target(doc) == doc["answer"]
        assert task.VERSION == VERSIONS[name]
        assert HEADLINE[name] in task.aggregation()
        assert "parse_rate" in task.aggregation()
        assert all(task.higher_is_better().values())
    aggregation = tasks["ner_locations"].aggregation()
    assert {aggregation[m].__name__ for m in ("loc_f1", "per_f1", "org_f1", "f1")} == {"micro_f1"}
    assert aggregation["precision"].__name__ == "micro_precision"
    assert tasks["address_parsing"].aggregation()["recall"].__name__ == "micro_recall"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_results_carry_the_data_version(task_manager):
    from lm_eval import evaluator

    out = evaluator.simple_evaluate(
        model=_reply_script(lambda doc, doc_id: doc["answer"]),
        tasks=["spatial_reasoning"],
        task_manager=task_manager,
        limit=1,
        log_samples=False,
    )
    assert out["versions"]["spatial_reasoning"] == VERSIONS["spatial_reasoning"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_per_group_metrics_average_only_their_own_docs(task_manager):
    # Gold for even docs, a wrong reply for odd ones, garbage for every 5th.
    def pattern(doc: dict, doc_id: int) -> str:
        if doc_id % 5 == 4:
            return "no idea"
        return doc["answer"] if doc_id % 2 == 0 else '{"answer": "Atlantis"}'

    results, docs = _evaluate(task_manager, "spatial_reasoning", pattern, limit=40)
    per_metric: dict[str, list[int]] = defaultdict(list)
    for doc_id, doc in enumerate(docs):
        for metric, value in utils.process_spatial_reasoning(doc, [pattern(doc, doc_id)]).items():
            per_metric[metric].append(value)
    assert len(per_metric["acc"]) == 40 and len(per_metric["acc_k3"]) == 5
    assert len(per_metric) == 9  # acc, parse_rate, 5 hop counts, city_direction, containment
    for metric, values in per_metric.items():
        assert results[f"{metric},none"] == pytest.approx(sum(values) / len(values)), metric
    assert results["acc,none"] != pytest.approx(results["acc_k1,none"])  # really separate averages


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_metrics_no_doc_reported_are_left_out(task_manager):
    # --limit 2 reaches only the k=1 and k=2 stories (interleaved order).
    results, _docs = _evaluate(task_manager, "spatial_reasoning", lambda doc, doc_id: doc["answer"], limit=2)
    assert results["acc_k1,none"] == 1.0 and results["acc_k2,none"] == 1.0
    assert "acc_k3,none" not in results and "acc_containment,none" not in results


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("task", ["address_parsing", "location_ner", "ner_locations"])
def test_micro_metrics_through_the_evaluator(task_manager, task):
    # Gold for every third doc, an empty answer for the others: the corpus micro F1
    # weighs docs by their number of gold items, unlike a mean of per-doc F1.
    def pattern(doc: dict, doc_id: int) -> str:
        return doc["answer"] if doc_id % 3 == 0 else ("{}" if task == "address_parsing" else "[]")

    results, docs = _evaluate(task_manager, task, pattern, limit=30)
    process = getattr(utils, PROCESS[task])
    per_doc = [process(doc, [pattern(doc, i)]) for i, doc in enumerate(docs)]
    metrics = ("f1", "precision", "recall") + (("loc_f1", "per_f1", "org_f1") if task == "ner_locations" else ())
    for metric in metrics:
        counts = [m[metric] for m in per_doc]
        expected = {"precision": utils.micro_precision, "recall": utils.micro_recall}.get(metric, utils.micro_f1)
        assert results[f"{metric},none"] == pytest.approx(expected(counts)), metric
    assert results["precision,none"] == 1.0  # the only claims made were gold ones
    assert 0 < results["f1,none"] < 1
    tp, fp, fn = (sum(m["f1"][i] for m in per_doc) for i in range(3))
    assert results["f1,none"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_coordinate_processing_through_the_evaluator(task_manager):
    results, _docs = _evaluate(
        task_manager, "coordinate_processing", lambda doc, doc_id: doc["answer"] if doc_id < 7 else "", limit=14
    )
    assert results["acc,none"] == pytest.approx(0.5) and results["parse_rate,none"] == pytest.approx(0.5)
    assert results["acc_utm_forward,none"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- the plain lm_eval CLI


@pytest.mark.slow
def test_plain_lm_eval_cli_runs_all_five_tasks(default_model_dir, tmp_path):
    output = tmp_path / "out"
    cmd = [
        str(ROOT / ".venv" / "bin" / "lm_eval"),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={default_model_dir},dtype=float32",
        "--device",
        "cpu",
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        ",".join(TASK_NAMES),
        "--limit",
        "2",
        # Mechanics, not quality: short answers and batching keep the tiny model's CPU run brief.
        "--gen_kwargs",
        "max_gen_toks=32",
        "--batch_size",
        "8",
        "--output_path",
        str(output),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=3600,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-5000:]
    result_files = sorted(output.rglob("results_*.json"))
    assert result_files, proc.stdout[-2000:]
    results = json.loads(result_files[-1].read_text(encoding="utf-8"))["results"]
    for task in TASK_NAMES:
        assert task in results, (task, sorted(results))
        assert f"{HEADLINE[task]},none" in results[task], (task, results[task])
        assert "parse_rate,none" in results[task]
        assert 0.0 <= results[task][f"{HEADLINE[task]},none"] <= 1.0
    print(f"lm_eval CLI, 5 tasks at --limit 2: {elapsed:.0f} s")
