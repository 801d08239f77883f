"""vLLM (CPU build) and the transformers reference engine agree on the default model in fp32.

Same greedy text, log-likelihoods within 1e-3, and the same scores on a multiple-choice lm-eval task.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from lm_eval.api.instance import Instance

from adapters.lm_eval_model import EngineLM
from runner.engines.base import SamplingSettings

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "Convert 48.8566 degrees north to degrees, minutes and seconds.",
]
PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " Berlin"),
    ("One, two, three,", " four"),
    ("The opposite of hot is", " cold and the opposite of up is down"),
]


@pytest.fixture(scope="module")
def engines(default_model_dir):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from runner.engines.hf import HFEngine
    from runner.engines.vllm import VLLMEngine

    vllm = VLLMEngine(
        str(default_model_dir),
        {
            "dtype": "float32",
            "enforce_eager": True,
            "distributed_executor_backend": "uni",
            "kv_cache_memory_bytes": 1 << 30,
            "max_model_len": 2048,
            "seed": 0,
            # As the runner runs it: multiple-choice requests share their context through the prefix cache.
            "enable_prefix_caching": True,
            "disable_log_stats": False,  # as the runner runs it: latencies and the KV-cache gauge
        },
    )
    hf = HFEngine(str(default_model_dir), dtype="float32", batch_size=8)
    yield {"vllm": vllm, "hf": hf}
    vllm.shutdown()
    hf.shutdown()


def chat_prompt(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(rendered, add_special_tokens=False).input_ids


def test_greedy_generations_are_identical(engines):
    tokenizer = engines["hf"].tokenizer
    prompts = [chat_prompt(tokenizer, p) for p in PROMPTS]
    settings = SamplingSettings(max_tokens=24, stop=(tokenizer.eos_token,))
    vllm_out = engines["vllm"].generate(prompts, settings)
    hf_out = engines["hf"].generate(prompts, settings)
    assert [c.text for c in vllm_out] == [c.text for c in hf_out]
    assert all(c.text for c in vllm_out)


def test_vllms_kv_cache_gauge_reads_while_requests_run_and_empties_after(engines):
    tokenizer = engines["hf"].tokenizer
    prompts = [chat_prompt(tokenizer, p) for p in PROMPTS * 4]
    seen: list[float | None] = []
    engine = engines["vllm"]
    engine.generate(prompts, SamplingSettings(max_tokens=16), lambda *_: seen.append(engine.kv_cache_usage()))
    assert len(seen) == len(prompts) and all(0.0 <= used <= 1.0 for used in seen)
    assert seen[0] > 0.0  # the first answer comes back while the others still hold cache blocks
    assert engine.kv_cache_usage() == 0.0


def test_log_likelihoods_agree_to_a_thousandth(engines):
    lms = {name: EngineLM(engine, max_length=2048, chat=False) for name, engine in engines.items()}
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    scores = {name: lm.loglikelihood(requests) for name, lm in lms.items()}
    for (v_lp, v_greedy), (h_lp, h_greedy) in zip(scores["vllm"], scores["hf"], strict=True):
        assert v_lp == pytest.approx(h_lp, abs=1e-3)
        assert v_greedy == h_greedy
    paris, berlin = scores["hf"][0][0], scores["hf"][1][0]
    assert paris > berlin  # the scores mean something, not only agree


def test_rolling_log_likelihoods_agree(engines):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    small_window = {name: EngineLM(e, max_length=64, chat=False) for name, e in engines.items()}
    (v,), (h,) = (small_window[name].loglikelihood_rolling(request) for name in ("vllm", "hf"))
    assert v == pytest.approx(h, abs=1e-2) and v < 0


def test_a_multiple_choice_lm_eval_task_runs_on_both_engines(engines, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = [
        {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Madrid"], "label": 0},
        {"question": "What colour is the sky on a clear day?", "choices": ["green", "blue", "red"], "label": 1},
        {"question": "How many legs does a spider have?", "choices": ["six", "four", "eight"], "label": 2},
        {"question": "Which is a fruit?", "choices": ["apple", "carrot", "potato"], "label": 0},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
    )
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)
    results = {}
    for name, engine in engines.items():
        lm = EngineLM(engine, max_length=2048, chat=False)
        out = simple_evaluate(model=lm, tasks=["tiny_mc"], task_manager=tasks, log_samples=True)
        results[name] = out
    acc = {name: r["results"]["tiny_mc"]["acc,none"] for name, r in results.items()}
    assert acc["vllm"] == acc["hf"]
    picks = {name: [s["filtered_resps"] for s in r["samples"]["tiny_mc"]] for name, r in results.items()}
    for v_doc, h_doc in zip(picks["vllm"], picks["hf"], strict=True):
        for (v_lp, _), (h_lp, _) in zip(v_doc, h_doc, strict=True):
            assert float(v_lp) == pytest.approx(float(h_lp), abs=1e-3)


def test_a_vllm_server_answers_and_scores_as_the_in_process_engine(engines, vllm_server):
    tokenizer = engines["hf"].tokenizer
    prompts = [chat_prompt(tokenizer, p) for p in PROMPTS]
    settings = SamplingSettings(max_tokens=24, stop=(tokenizer.eos_token,))
    served = vllm_server.generate(prompts, settings)
    assert [c.text for c in served] == [c.text for c in engines["vllm"].generate(prompts, settings)]
    assert all(c.output_tokens > 0 and c.latency_s > 0 for c in served)

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    over_http = EngineLM(vllm_server, max_length=2048, chat=False).loglikelihood(requests)
    in_process = EngineLM(engines["vllm"], max_length=2048, chat=False).loglikelihood(requests)
    for (s_lp, s_greedy), (v_lp, v_greedy) in zip(over_http, in_process, strict=True):
        assert s_lp == pytest.approx(v_lp, abs=1e-3) and s_greedy == v_greedy
    # The server's own counters, read around the pass: what it generated for these requests.
    assert vllm_server.stats.extra["server_requests"] >= len(prompts)
    assert vllm_server.stats.extra["server_generation_tokens"] >= sum(c.output_tokens for c in served)
    # What the summary's header calls it: the server engine and the build that serves, not the platform (cpu).
    assert re.fullmatch(r"vllm_server \(vLLM \d+\.\d+\S* CPU build, started by the runner\)", vllm_server.describe())


def test_a_server_that_serves_another_model_is_refused_before_any_request(vllm_server, default_model_dir):
    from runner.engines.server import ServerError, VLLMServerEngine

    with pytest.raises(ServerError, match=r"serves smollm2_135m, not this job's model \(qwen25_7b"):
        VLLMServerEngine(vllm_server.url, str(default_model_dir), accept=("qwen25_7b", "Qwen/Qwen2.5-7B-Instruct"))
    attached = VLLMServerEngine(vllm_server.url, str(default_model_dir), accept=("smollm2_135m",))
    assert attached.model == "smollm2_135m" and attached.stats.extra["kv_cache_tokens"] > 0
    attached.shutdown()  # attached: the server it did not start keeps running
    assert vllm_server.generate([[1, 2, 3]], SamplingSettings(max_tokens=2))[0].output_tokens == 2


@pytest.mark.parametrize("name", ["vllm", "hf"])
def test_a_request_the_engine_cannot_take_fails_alone_and_the_others_are_answered(engines, name):
    engine = engines[name]
    tokenizer = engines["hf"].tokenizer
    good = [chat_prompt(tokenizer, p) for p in PROMPTS[:2]]
    bad = [1, 2, len(tokenizer) + 1000]  # a token id outside the vocabulary: the engine cannot embed it
    settings = SamplingSettings(max_tokens=8, stop=(tokenizer.eos_token,))
    alone = engine.generate(good, settings)
    before = engine.stats.as_metrics()["requests_failed"]
    seen: list[int] = []
    out = engine.generate([good[0], bad, good[1]], settings, on_result=lambda i, _: seen.append(i))
    assert [c.text for c in (out[0], out[2])] == [c.text for c in alone]  # the others: as if it were not there
    assert (out[1].text, out[1].finish_reason, out[1].output_tokens) == ("", "error", 0) and out[1].error
    assert sorted(seen) == [0, 1, 2]  # the failure is reported as it happens, like an answer
    assert engine.stats.as_metrics()["requests_failed"] == before + 1
    scores = engine.loglikelihood([(good[0], [5, 6]), (bad, [5, 6])])
    assert scores[0].error is None and scores[0].logprob < 0
    assert scores[1].logprob == float("-inf") and not scores[1].is_greedy and scores[1].error
