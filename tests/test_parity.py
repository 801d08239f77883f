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
            "block_size": 32,  # conf/engine/auto.yaml's CPU block: a 64-token context fills two
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


def score_alone(engine, requests):
    """The reference: every request on its own, the way vLLM scored them before shared contexts, its whole
    prompt read with prompt_logprobs=1 and no prefix cache (vLLM skips it for prompt_logprobs)."""
    from vllm import SamplingParams

    from runner.engines.base import LogLikelihood

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
    outputs = engine.llm.generate([{"prompt_token_ids": c + x} for c, x in requests], params, use_tqdm=False)
    scores = []
    for (context, continuation), out in zip(requests, outputs, strict=True):
        rows = out.prompt_logprobs[len(context) : len(context) + len(continuation)]
        picked = [row[token] for row, token in zip(rows, continuation, strict=True)]
        scores.append(LogLikelihood(sum(p.logprob for p in picked), all(p.rank == 1 for p in picked)))
    return scores


def multiple_choice(tokenizer, greedy) -> list[tuple[list[int], list[int]]]:
    """Requests as lm-eval sends a multiple-choice task, every case the shared-context paths take apart."""
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    requests = []
    for question in ("Which is a colour?\nA. red\nB. dog\nC. run\nD. six\nAnswer:", "Pick one.\nAnswer:"):
        context = ids(question)
        letters = [ids(f" {x}")[0] for x in "ABCD"]
        requests += [(context, [t]) for t in letters + [greedy(context)]]  # one token each: one pass
        requests += [(context, [ids("\n")[0], t]) for t in letters]  # "\n" + a letter, as a chat template has it
    for question, choices in (
        ("The capital of France is", [" Paris", " Paris, France", " Rome", " the city of Lyon"]),
        ("Name a large city:", [" New York", " New Delhi", " Tokyo"]),  # choices sharing their first token
    ):
        requests += [(ids(question), ids(c)) for c in choices]
    # A context of exactly two cache blocks: the cache holds all of it once computed, but vLLM computes at least
    # a prompt's last token, so its positions compute its last block again.
    block = (ids(" river") * 64)[:64]
    requests += [(block, ids(" and the sea")), (block, ids(" or a lake"))]
    # At the context length (2048 here): the second request is 2,047 tokens (the reference below sends a whole
    # request as one prompt, plus the token it samples), and the engine scores it.
    long = (ids(" The quick brown fox jumps over the lazy dog.") * 300)[: 2048 - 3]
    requests += [(long, ids(" Done")), (long, ids(" The end"))]
    return requests


def test_shared_context_scoring_equals_scoring_each_request_alone(engines):
    """vLLM: a request per position the choices' continuations pass through, reading the prefix cache, gives
    what scoring every request alone gives, within 1e-4, with the same greedy flags, and no request computes
    log-probabilities over its prompt (what made a long context's pass cost its length times the vocabulary)."""
    from vllm import SamplingParams

    from runner.engines.shared_context import by_position, group_by_context

    engine = engines["vllm"]
    first = SamplingParams(max_tokens=1, temperature=0.0)
    greedy = lambda c: engine.llm.generate([{"prompt_token_ids": c}], first, use_tqdm=False)[0].outputs[0].token_ids[0]  # noqa: E731
    requests = multiple_choice(engines["hf"].tokenizer, greedy)
    sent: list[int] = []
    rows: list[int] = []  # per vLLM request: the prompt positions vLLM computed log-probabilities for

    def counted(passes, on_output, on_error):
        passes = list(passes)
        sent.append(len(passes))

        def output(at, out):
            rows.append(sum(row is not None for row in out.prompt_logprobs or []))
            on_output(at, out)

        return run(passes, output, on_error)

    run = engine._run
    engine._run = counted  # type: ignore[method-assign]
    try:
        shared = engine.loglikelihood(requests)
    finally:
        del engine._run
    alone = score_alone(engine, requests)
    for index, (a, b) in enumerate(zip(shared, alone, strict=True)):
        assert a.error is None and b.error is None
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4), index
        assert a.is_greedy == b.is_greedy, index
    assert sum(s.is_greedy for s in alone) >= 2  # greedy flags were really compared, not all False
    # One pass, a request per position: the letters after "\n" are one request, as are a doc's first tokens.
    positions = by_position(requests)
    assert sent == [len(positions)] and len(positions) < sum(len(c) for _, c in requests) - 10
    assert len(rows) == len(positions) and max(rows) == 0
    assert max(len(c) + len(x) for c, x in requests) == 2047  # the window's length, less the sampled token

    # The transformers engine's own grouping (a row per group), against vLLM's (the near-window pair left out:
    # a batch of 2,047-token rows is gigabytes of logits on a CPU).
    groups = group_by_context(requests)
    assert [len(g.members) for g in groups[:4]] == [5, 4, 5, 4]  # each question's letters: one row per form
    hf = engines["hf"].loglikelihood(requests[:-2])
    for a, b in zip(hf, alone[:-2], strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3) and a.is_greedy == b.is_greedy


def test_a_bad_choice_in_a_one_pass_group_fails_alone(engines):
    tokenizer = engines["hf"].tokenizer
    context = tokenizer("Answer:", add_special_tokens=False).input_ids
    bad = len(tokenizer) + 1000  # outside the vocabulary
    for name in ("vllm", "hf"):
        scores = engines[name].loglikelihood([(context, [330]), (context, [bad]), (context, [389])])
        assert [s.error is None for s in scores] == [True, False, True], name
        assert scores[0].logprob < 0 and scores[1].logprob == float("-inf")


def test_a_multiple_choice_pass_holds_at_most_a_batch_of_vllms_outputs(engines):
    """What a pass holds does not grow with the task: 2,000 requests (1,500 vLLM requests), never more than a
    batch of vLLM's outputs alive (each is let go once scored), and never more than four batches of requests
    inside vLLM (each goes in as an earlier one finishes), yet always more than one batch: the engine is fed."""
    import weakref

    engine = engines["vllm"]
    outputs: weakref.WeakSet = weakref.WeakSet()
    alive: list[int] = []
    inside: list[int] = []  # requests vLLM holds, at each score

    def watch(index: int, _) -> None:  # how many of vLLM's outputs are still held, every 200 scores
        inside.append(engine.llm.llm_engine.get_num_unfinished_requests())
        if index % 200 == 199:
            alive.append(len(outputs))

    run = engine._run

    def watched(passes, on_output, on_error):
        return run(passes, lambda i, out: (outputs.add(out), on_output(i, out)), on_error)

    # 500 docs of four choices with one-token contexts: one-letter choices (a request per doc) and two-token
    # ones (five requests per doc: the four first tokens together, then each choice's second).
    letters, words = [[32], [33], [34], [35]], [[1000, 1001], [1002, 1003], [1004, 1005], [1006, 1007]]
    pairs = [([2000 + d], choice) for d in range(500) for choice in (letters if d % 2 else words)]
    engine._run = watched  # type: ignore[method-assign]
    try:
        scores = engine.loglikelihood(pairs, on_result=watch)
    finally:
        del engine._run
    assert all(s.error is None for s in scores)
    assert len(alive) == 10 and max(alive) <= 256, alive  # a batch at most (max_num_seqs), never the task's
    batch = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    assert batch < max(inside) <= 4 * batch, (batch, max(inside))


def test_rolling_log_likelihoods_agree(engines):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    small_window = {name: EngineLM(e, max_length=64, chat=False) for name, e in engines.items()}
    (v,), (h,) = (small_window[name].loglikelihood_rolling(request) for name in ("vllm", "hf"))
    assert v == pytest.approx(h, abs=1e-2) and v < 0


def test_a_multiple_choice_lm_eval_task_runs_on_both_engines(engines, tmp_path, monkeypatch):
    """Two lm-eval multiple-choice tasks, choices of several tokens and one-token letters (MMLU's form), on vLLM
    with shared contexts, on vLLM scoring every request alone, and on transformers: the same acc and acc_norm
    on every doc, log-likelihoods within 1e-4 of scoring alone and 1e-3 of transformers."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = [
        {"question": "What is the capital of France?", "choices": ["Paris", "the city of Rome", "Madrid"], "label": 0},
        {"question": "What colour is the sky on a clear day?", "choices": ["green", "light blue", "red"], "label": 1},
        {"question": "How many legs does a spider have?", "choices": ["six", "four", "eight legs"], "label": 2},
        {"question": "Which is a fruit?", "choices": ["an apple", "a carrot", "a potato"], "label": 0},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\noutput_type: multiple_choice\n"
    common += "test_split: test\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    common += "metadata:\n  version: 1.0\n"
    (tmp_path / "mc.yaml").write_text(
        f"task: tiny_mc\n{common}"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
    )
    (tmp_path / "letters.yaml").write_text(  # MMLU's form: the choices listed, the answer one letter
        f"task: tiny_letters\n{common}"
        'doc_to_text: "{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C"]\n'
    )
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)

    def evaluate(engine) -> dict:
        lm = EngineLM(engine, max_length=2048, chat=False)
        return simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_letters"], task_manager=tasks, log_samples=True)

    def alone(self, requests, on_result):
        return score_alone(self, requests)

    results = {"vllm": evaluate(engines["vllm"]), "hf": evaluate(engines["hf"])}
    with monkeypatch.context() as patch:
        patch.setattr(type(engines["vllm"]), "_loglikelihood", alone)
        results["vllm alone"] = evaluate(engines["vllm"])
    for task in ("tiny_mc", "tiny_letters"):
        docs = {name: sorted(r["samples"][task], key=lambda d: d["doc_id"]) for name, r in results.items()}
        for name, tolerance in (("vllm alone", 1e-4), ("hf", 1e-3)):
            for ours, theirs in zip(docs["vllm"], docs[name], strict=True):
                assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"]), (task, name)
                for (a,), (b,) in zip(ours["resps"], theirs["resps"], strict=True):
                    assert a[0] == pytest.approx(b[0], abs=tolerance) and a[1] == b[1], (task, name)
        scores = {name: r["results"][task]["acc,none"] for name, r in results.items()}
        assert len(set(scores.values())) == 1, scores


def test_a_vllm_server_answers_and_scores_as_the_in_process_engine(engines, vllm_server):
    tokenizer = engines["hf"].tokenizer
    prompts = [chat_prompt(tokenizer, p) for p in PROMPTS]
    settings = SamplingSettings(max_tokens=24, stop=(tokenizer.eos_token,))
    served = vllm_server.generate(prompts, settings)
    assert [c.text for c in served] == [c.text for c in engines["vllm"].generate(prompts, settings)]
    assert all(c.output_tokens > 0 and c.latency_s > 0 for c in served)

    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    # By position, as in process: this vLLM's server reads `logprob_token_ids` (no fallback to prompt_logprobs).
    assert vllm_server._reads_tokens(prompts[0])
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
