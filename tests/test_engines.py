"""Engine plumbing without loading a model: lazy loading, reuse across sweep jobs, cache identity, and an
engine of the user's own (docs/engines.md) running the default job."""

from __future__ import annotations

import json
import re

import pytest
from conftest import PROJECT_ROOT, run_cli
from mlflow import MlflowClient

from runner.engines import pool
from runner.engines.base import Completion, Engine, LogLikelihood, SamplingSettings
from runner.engines.identity import response_cache_key
from runner.engines.lazy import LazyEngine
from runner.engines.selection import select_engine
from runner.machine.hardware import Hardware

GiB = 1024**3


class CountingEngine(Engine):
    name = "counting"
    loads = 0

    def __init__(self) -> None:
        super().__init__()
        CountingEngine.loads += 1
        self.stats.load_seconds = 1.5
        self.stats.extra["kv_cache_tokens"] = 1000.0
        self.closed = False

    @property
    def tokenizer(self):
        raise AssertionError("the lazy engine's own tokenizer is used")

    def _generate(self, prompts, settings, on_result):
        return [Completion("x", len(p), 1) for p in prompts]

    def _loglikelihood(self, requests, on_result):
        return [LogLikelihood(-1.0, True) for _ in requests]

    def shutdown(self) -> None:
        self.closed = True


@pytest.fixture
def lazy(default_model_dir):
    CountingEngine.loads = 0

    def make() -> LazyEngine:
        return LazyEngine(CountingEngine, str(default_model_dir))

    yield make
    pool.release()


def test_the_model_loads_only_when_a_request_needs_it(lazy):
    engine = lazy()
    assert not engine.loaded and CountingEngine.loads == 0
    assert engine.tokenizer.eos_token == "<|im_end|>"  # prompts can be built without the model
    assert engine.generate([], None) == [] and not engine.loaded
    engine.generate([[1, 2, 3]], SamplingSettings())
    assert engine.loaded and CountingEngine.loads == 1
    assert engine.stats.requests == 1 and engine.stats.load_seconds == 1.5  # the real engine's numbers
    engine.loglikelihood([([1], [2])])
    assert CountingEngine.loads == 1 and engine.stats.loglikelihood_requests == 1


def test_sweep_jobs_with_the_same_settings_reuse_the_loaded_engine(lazy):
    first, reused = pool.acquire("model-a", lazy)
    assert not reused
    first.generate([[1]], SamplingSettings())
    second, reused = pool.acquire("model-a", lazy)
    assert second is first and reused and CountingEngine.loads == 1
    # A new job starts its own measurements; the engine's cache capacity still belongs to it.
    assert second.stats.requests == 0 and second.stats.load_seconds == 0
    assert second.stats.extra["kv_cache_tokens"] == 1000.0
    real = first._engine
    third, reused = pool.acquire("model-b", lazy)
    assert third is not first and not reused
    assert real.closed  # the previous engine was shut down before the next one could load


def test_the_response_cache_is_keyed_on_model_identity_not_on_how_it_ran(compose_cfg):
    base = compose_cfg()
    cpu = select_engine(base.engine, base.model, Hardware(host_memory_bytes=64 * GiB))
    key = response_cache_key(base, cpu)
    same = compose_cfg("+engine.args.max_num_seqs=4", "engine.cpu.kv_cache_memory_bytes=2147483648", "limit=3")
    assert response_cache_key(same, cpu) == key
    for override in (
        "model.dtype=bfloat16",
        "model.revision=v2",
        "model.load_format=dummy",
        "model.chat_template=false",
    ):
        assert response_cache_key(compose_cfg(override), cpu) != key, override
    hf = compose_cfg("engine=hf")
    assert response_cache_key(hf, select_engine(hf.engine, hf.model, Hardware(host_memory_bytes=64 * GiB))) != key


def test_engine_hf_is_the_transformers_reference_engine(compose_cfg):
    from runner.engines.vllm_args import max_length

    cfg = compose_cfg("engine=hf")
    selection = select_engine(cfg.engine, cfg.model, Hardware(host_memory_bytes=64 * GiB))
    assert selection.kind == "hf" and "transformers on the CPU" in selection.reason
    assert max_length(selection, cfg.model, cfg.engine) == cfg.model.max_model_len


def test_the_light_tokenizer_path_gives_what_autotokenizer_gives(default_model_dir):
    from transformers import AutoTokenizer

    from runner.engines.lazy import load_tokenizer

    light, auto = load_tokenizer(str(default_model_dir)), AutoTokenizer.from_pretrained(default_model_dir)
    assert type(light) is type(auto)
    chat = [{"role": "user", "content": "Où est Zürich? 48°51'24\"N"}]
    for text in ("Hello, world!", "Où est Zürich? 48°51'24\"N", "  spaces\tand\nlines  "):
        assert light(text).input_ids == auto(text).input_ids
    rendered = light.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (light.eos_token, light.bos_token_id) == (auto.eos_token, auto.bos_token_id)


def test_an_engine_of_your_own_from_the_docs_runs_the_default_job(tmp_path, default_model_dir):
    docs = (PROJECT_ROOT / "docs" / "engines.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", docs, re.S)
    (tmp_path / "my_engines.py").write_text(example)
    out = tmp_path / "out"
    job = ["engine._target_=my_engines.CannedEngine", "+engine.answer=Paris", "limit=2", f"paths.output_dir={out}"]
    result = run_cli(*job, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-4000:]

    samples = [json.loads(line) for path in out.glob("runs/*/*/lm_eval/**/samples_*.jsonl") for line in path.open()]
    assert len(samples) == 10 and all(s["resps"] == [["Paris"]] for s in samples)  # 5 datasets x 2: its answers
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["engine_class"] == "my_engines.CannedEngine"
    assert run.data.metrics["requests"] == 10 and run.data.metrics["engine_loaded"] == 1


def test_an_engine_of_your_own_has_its_own_response_cache(compose_cfg):
    selection = select_engine(compose_cfg().engine, compose_cfg().model, Hardware(host_memory_bytes=64 * GiB))
    builtin = response_cache_key(compose_cfg(), selection)
    assert response_cache_key(compose_cfg("engine._target_=runner.engines.vllm.VLLMEngine"), selection) == builtin
    assert response_cache_key(compose_cfg("engine._target_=my_engines.CannedEngine"), selection) != builtin


def test_the_class_is_named_once_in_conf_engine(compose_cfg):
    """engine=auto takes the class from conf/engine/<placement>.yaml; engine._target_ names any other."""
    from omegaconf import OmegaConf

    from runner.config.schema import ConfigError
    from runner.engines.hf import HFEngine
    from runner.engines.load import engine_class
    from runner.engines.vllm import VLLMEngine

    cpu = select_engine(compose_cfg().engine, compose_cfg().model, Hardware(host_memory_bytes=64 * GiB))
    assert engine_class(cpu, compose_cfg().engine) is VLLMEngine
    assert engine_class(cpu, OmegaConf.create({"_target_": None})) is VLLMEngine  # no class named: the built-ins
    assert engine_class(cpu, compose_cfg("engine._target_=runner.engines.hf.HFEngine").engine) is HFEngine
    with pytest.raises(ConfigError, match="is a class, but not an Engine"):
        engine_class(cpu, compose_cfg("engine._target_=collections.OrderedDict").engine)
    hf = select_engine(compose_cfg("engine=hf").engine, compose_cfg().model, Hardware(host_memory_bytes=64 * GiB))
    assert engine_class(hf, OmegaConf.create({"_target_": None})) is HFEngine  # from conf/engine/hf.yaml
    # No second list of classes: every placement selection can pick has its file, and nothing else names one.
    from runner.config.resolvers import CONFIG_DIR
    from runner.engines.selection import KINDS

    for kind in set(KINDS) - {"auto"}:
        assert OmegaConf.load(CONFIG_DIR / "engine" / f"{kind}.yaml")._target_
    sources = "".join(p.read_text() for p in (CONFIG_DIR.parent / "runner").rglob("*.py"))
    assert "runner.engines.vllm.VLLMEngine" not in sources and "runner.engines.hf.HFEngine" not in sources


FLAKY_ENGINE = '''
from runner.engines.base import Completion
from my_engines import CannedEngine


class FlakyEngine(CannedEngine):
    """The docs' engine, failing every other request as an engine rejects one it cannot take."""

    def _generate(self, prompts, settings, on_result):
        answers = super()._generate(prompts, settings, on_result)
        failed = [Completion.failed(p, "ValueError: rejected") for p in prompts]
        return [failed[i] if i % 2 else answer for i, answer in enumerate(answers)]
'''


@pytest.mark.parametrize("limit", ["0.05", "1.0"])
def test_failed_requests_are_wrong_answers_and_too_many_fail_the_job_with_its_scores_kept(tmp_path, limit):
    docs = (PROJECT_ROOT / "docs" / "engines.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", docs, re.S)
    (tmp_path / "my_engines.py").write_text(example)
    (tmp_path / "flaky_engines.py").write_text(FLAKY_ENGINE)
    out = tmp_path / "out"
    only = [
        f"~category.datasets.{n}" for n in ("coordinate_processing", "address_parsing", "location_ner", "ner_locations")
    ]
    job = ["engine._target_=flaky_engines.FlakyEngine", "limit=4", "cache=false", *only]
    result = run_cli(
        *job, f"engine.max_failed_fraction={limit}", f"paths.output_dir={out}", env={"PYTHONPATH": str(tmp_path)}
    )
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("text_geospatial").experiment_id])
    assert run.data.metrics["requests_failed"] == 2 and run.data.metrics["success_rate"] == 0.5
    assert run.data.metrics["spatial_reasoning/requests_failed"] == 2 and "spatial_reasoning/score" in run.data.metrics
    assert "4 requests, 2 failed in the engine (scored wrong)" in result.stdout
    (table,) = out.glob("runs/*/*/tables/samples/spatial_reasoning/*.json")
    errors = json.loads(table.read_text())
    assert sorted(errors["error"]) == ["", "", "ValueError: rejected", "ValueError: rejected"]
    if limit == "1.0":  # accepted: the job ends as usual
        assert result.returncode == 0 and run.info.status == "FINISHED", result.stdout[-3000:]
        return
    assert result.returncode == 2 and run.info.status == "FAILED", result.stdout[-3000:]
    assert (
        "error: 2 of 4 requests failed in the engine (50.0%), more than engine.max_failed_fraction=0.05"
        in result.stdout
    )
