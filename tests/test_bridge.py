"""The lm-eval bridge over an engine: batching, ordering, stop sequences, chat template.

A fake engine stands in for vLLM so the bridge's own logic is tested; the real engine runs in test_e2e.
"""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance

from adapters.lm_eval_model import EngineLM
from runner.engines.base import Completion, Engine, LogLikelihood, SamplingSettings


class RecordingEngine(Engine):
    """Answers each prompt with its token count; records every call the bridge makes."""

    name = "fake"

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self._tokenizer = tokenizer
        self.calls: list[tuple[list[list[int]], list[SamplingSettings]]] = []
        self.scored: list[list[tuple[list[int], list[int]]]] = []

    @property
    def tokenizer(self):
        return self._tokenizer

    def _generate(self, prompts, settings, on_result):
        self.calls.append((prompts, settings))
        return [Completion(text=f"len={len(p)}", prompt_tokens=len(p), output_tokens=2) for p in prompts]

    def _loglikelihood(self, requests, on_result):
        self.scored.append(requests)
        # -1 per continuation token; "greedy" when the continuation is one token long.
        return [LogLikelihood(-float(len(cont)), len(cont) == 1) for _, cont in requests]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def request(context: str, **gen_kwargs) -> Instance:
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def test_all_requests_with_the_same_settings_go_to_the_engine_in_one_call(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=4096)
    contexts = [f"question {i} " + "word " * i for i in range(40)]
    out = lm.generate_until([request(c, until=["\n\n"], max_gen_toks=32) for c in contexts])
    assert len(engine.calls) == 1
    assert len(engine.calls[0][0]) == 40
    # Order is the request order, whatever the engine does inside.
    assert out == [f"len={len(tokenizer(c, add_special_tokens=False).input_ids)}" for c in contexts]


def test_requests_with_different_settings_go_in_one_call_each_with_its_own(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=4096)
    reqs = [request("a", max_gen_toks=16), request("b b b", max_gen_toks=64), request("c c", max_gen_toks=16)]
    out = lm.generate_until(reqs)
    ((prompts, settings),) = engine.calls
    assert [s.max_tokens for s in settings] == [64, 16, 16]  # longest prompt first, its settings beside it
    assert [len(p) for p in prompts] == sorted((len(p) for p in prompts), reverse=True)
    assert out == [f"len={len(tokenizer(c, add_special_tokens=False).input_ids)}" for c in ("a", "b b b", "c c")]


def test_stop_sequences_include_the_models_end_of_turn_and_greedy_by_default(tokenizer):
    engine = RecordingEngine(tokenizer)
    EngineLM(engine, max_length=4096, seed=7).generate_until([request("x", until=["</answer>"])])
    settings = engine.calls[0][1][0]
    assert settings.stop == ("</answer>", tokenizer.eos_token)
    assert settings.temperature == 0.0
    assert settings.seed == 7


def test_sampling_settings_pass_through(tokenizer):
    engine = RecordingEngine(tokenizer)
    EngineLM(engine, max_length=4096).generate_until([request("x", do_sample=True, temperature=0.7, top_p=0.9)])
    settings = engine.calls[0][1][0]
    assert (settings.temperature, settings.top_p) == (0.7, 0.9)


def test_long_prompts_are_truncated_to_fit_the_context_and_counted(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=64)
    lm.generate_until([request("word " * 500, max_gen_toks=16), request("short", max_gen_toks=16)])
    prompts, settings = engine.calls[0]
    assert len(prompts[0]) + settings[0].max_tokens <= 64
    assert lm.truncated == 1  # reported as the run's requests_truncated, and warned about in the summary
    lm.loglikelihood([Instance("loglikelihood", {}, ("word " * 500, " end"), 0)])
    assert lm.truncated == 2 and len(engine.scored[0][0][0]) + len(engine.scored[0][0][1]) <= 64


def test_answers_reach_the_response_cache_as_each_request_finishes(tokenizer):
    class Streaming(RecordingEngine):
        def _generate(self, prompts, settings, on_result):
            out = []
            for index, prompt in enumerate(prompts):  # the cache must hold each answer before the next is made
                assert len(saved) == index
                out.append(Completion(text=f"len={len(prompt)}", prompt_tokens=len(prompt), output_tokens=1))
                on_result(index, out[-1])
            return out

    saved: list = []
    lm = EngineLM(Streaming(tokenizer), max_length=4096)
    lm.set_cache_hook(type("Hook", (), {"add_partial": lambda self, *a: saved.append(a)})())
    lm.generate_until([request(c) for c in ("a", "b c", "d e f")])
    assert [s[0] for s in saved] == ["generate_until"] * 3

    # An engine that cannot stream still reports every answer, once, when its call returns.
    saved.clear()
    lm = EngineLM(RecordingEngine(tokenizer), max_length=4096)
    lm.set_cache_hook(type("Hook", (), {"add_partial": lambda self, *a: saved.append(a)})())
    lm.generate_until([request(c) for c in ("a", "b c")])
    assert len(saved) == 2


def test_chat_template_renders_lm_evals_messages_with_the_models_template(tokenizer):
    lm = EngineLM(RecordingEngine(tokenizer), max_length=4096)
    text = lm.apply_chat_template([{"role": "user", "content": "Where is Paris?"}])
    assert text.startswith("<|im_start|>system")
    assert "<|im_start|>user\nWhere is Paris?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # The template's own special tokens are not doubled by the tokenizer.
    ids = lm.tok_encode(text)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and ids[1] != ids[0]


def test_engine_stats_count_requests_tokens_and_latency(tokenizer):
    engine = RecordingEngine(tokenizer)
    EngineLM(engine, max_length=4096).generate_until([request("one two"), request("three")])
    stats = engine.stats
    assert stats.requests == 2 and stats.output_tokens == 4 and stats.answered == 2
    assert stats.prompt_tokens == sum(len(p) for p in engine.calls[0][0])
    metrics = stats.as_metrics()
    assert metrics["output_tokens_per_s"] > 0 and metrics["input_tokens_per_s"] > 0
    assert metrics["success_rate"] == 1.0


def test_latency_percentiles_follow_numpys_linear_method():
    from runner.engines.base import EngineStats

    stats = EngineStats(requests=5, answered=5, generate_seconds=1.0, latencies=[5.0, 1.0, 2.0, 4.0, 3.0])
    metrics = stats.as_metrics()
    assert (metrics["latency_mean_s"], metrics["latency_p50_s"]) == (3.0, 3.0)
    assert metrics["latency_p95_s"] == pytest.approx(4.8)


def ll_request(context: str, continuation: str) -> Instance:
    return Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)


def test_all_log_likelihood_requests_go_to_the_engine_in_one_call(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=4096, chat=False)
    reqs = [ll_request("The capital of France is", " Paris"), ll_request("2 + 2 =", " four apples")]
    out = lm.loglikelihood(reqs)
    assert len(engine.scored) == 1 and len(engine.scored[0]) == 2
    # lm-eval's own pair encoding: context and continuation tokens concatenate to the whole text's tokens.
    for (context, continuation), (ctx, cont) in zip(engine.scored[0], [r.args for r in reqs], strict=True):
        assert context + continuation == tokenizer(ctx + cont).input_ids
        assert tokenizer.decode(continuation) == cont
    assert out == [
        (-float(len(engine.scored[0][0][1])), len(engine.scored[0][0][1]) == 1),
        (-float(len(engine.scored[0][1][1])), len(engine.scored[0][1][1]) == 1),
    ]


def test_log_likelihood_requests_move_the_progress_with_their_input_tokens_and_draw_no_library_bar(tokenizer, capsys):
    """The job's line counts each scored request and its tokens; lm-eval's own "Tokenizing inputs" bar stays off."""

    class Hook:
        def __init__(self) -> None:
            self.advanced: list[tuple[int, int, int]] = []

        def expect(self, requests: int) -> None:
            pass

        def advance(self, requests: int = 1, output_tokens: int = 0, input_tokens: int = 0) -> None:
            self.advanced.append((requests, output_tokens, input_tokens))

    engine, hook = RecordingEngine(tokenizer), Hook()
    lm = EngineLM(engine, max_length=4096, chat=False, progress=hook)
    lm.loglikelihood([ll_request("The capital of France is", " Paris"), ll_request("2 + 2 =", " four apples")])
    sizes = sorted(len(context) + len(continuation) for context, continuation in engine.scored[0])
    assert sorted(hook.advanced) == sorted((1, 0, size) for size in sizes)
    captured = capsys.readouterr()
    assert "Tokenizing inputs" not in captured.err + captured.out


def test_an_empty_context_is_conditioned_on_the_prefix_token(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=4096, chat=False)
    lm.loglikelihood([ll_request("", "Hello world")])
    ((context, continuation),) = engine.scored[0]
    assert context == [lm.prefix_token_id]
    assert tokenizer.decode(continuation) == "Hello world"


def test_long_contexts_are_cut_from_the_left_to_fit_the_window(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=32, chat=False)
    lm.loglikelihood([ll_request("word " * 100, "end")])
    ((context, continuation),) = engine.scored[0]
    assert len(context) + len(continuation) == 32


def test_rolling_log_likelihood_scores_every_token_once_across_windows(tokenizer):
    engine = RecordingEngine(tokenizer)
    lm = EngineLM(engine, max_length=16, chat=False)
    text = "one two three four five six seven eight nine ten " * 4
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    n_tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    (windows,) = engine.scored
    # The model reads context + continuation minus its last token: at most the window's 16 tokens.
    assert len(windows) > 1 and all(len(c) + len(p) - 1 <= 16 for c, p in windows)
    assert sum(len(p) for _, p in windows) == n_tokens
    assert total == -float(n_tokens)
