"""Tensor and pipeline parallelism on vLLM's CPU build give the single-worker engine's answers (data-parallel
replicas: tests/test_replicas.py).

A tiny Llama (runner/catalog/architectures/tiny_llama: 4 heads, 2 KV heads) with seeded random weights is saved
once as a real checkpoint, so every layout loads the same numbers. Each layout runs in a child
process (vLLM spawns its workers; a hang must not take the test session with it) and reports its
greedy completions and log-likelihoods for fixed prompts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config.resolvers import PROJECT_ROOT

pytestmark = pytest.mark.slow

PROBE = r"""
import json, os, sys
from omegaconf import OmegaConf
from runner.engines.build import build_engine
from runner.engines.base import SamplingSettings
from runner.engines.selection import Selection

folder, layout = sys.argv[1], json.loads(sys.argv[2])
args = {"dtype": "float32", "enforce_eager": layout.pop("enforce_eager", True), "kv_cache_memory_bytes": 1 << 28,
        "max_model_len": 512, "seed": 0, "distributed_executor_backend": layout.pop("backend", "uni")}
selection = Selection(layout.pop("kind", "cpu"), "test", **layout)
# "distributed" reads the GPU defaults: the same settings here.
engine_cfg = OmegaConf.create({"_target_": None, "cpu": args, "gpu": args, "args": {}, "cpu_env": {}, "hf": {}})
model = OmegaConf.create({"name": "tiny", "path": folder, "gguf": None, "dtype": "float32", "max_model_len": 512,
                          "trust_remote_code": False, "load_format": "auto", "quantization": None, "revision": None})
engine = build_engine(selection, folder, model, engine_cfg)
try:
    prompts = [[1, 300 + 7 * i, 42, 9000 + i, 17] for i in range(6)]
    texts = [c.text for c in engine.generate(prompts, SamplingSettings(max_tokens=12))]
    scores = [s.logprob for s in engine.loglikelihood([(p, [5, 6, 7]) for p in prompts])]
    print("RESULT" + json.dumps({"texts": texts, "scores": scores, "extra": engine.stats.extra}), flush=True)
finally:
    engine.shutdown()
"""


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, default_model_dir) -> Path:
    """tiny_llama's architecture with seeded random weights, saved as safetensors, plus the default tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama_random")
    config = AutoConfig.from_pretrained(PROJECT_ROOT / "runner" / "catalog" / "architectures" / "tiny_llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a wider spread than the default init, so greedy choices are not near-ties
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (default_model_dir / name).is_file():
            shutil.copyfile(default_model_dir / name, folder / name)
    return folder


def _run(folder: Path, layout: dict, tmp_path: Path, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), json.dumps(layout)],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(PROJECT_ROOT),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CACHE_ROOT": str(tmp_path / "vllm"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, f"{layout}: rc={done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(lines[0].removeprefix("RESULT"))


@pytest.fixture(scope="module")
def single(tiny_checkpoint, tmp_path_factory) -> dict:
    return _run(tiny_checkpoint, {}, tmp_path_factory.mktemp("single"))


def _same_answers(got: dict, want: dict, tolerance: float) -> None:
    assert got["texts"] == want["texts"]
    assert got["scores"] == pytest.approx(want["scores"], abs=tolerance)


def test_tensor_parallel_two_gives_the_single_workers_answers(tiny_checkpoint, single, tmp_path):
    layout = {"kind": "distributed", "tensor_parallel_size": 2, "gpus": 2, "backend": "mp"}
    # Two CPU workers, one core each (vLLM refuses to bind two workers to one NUMA node by default).
    got = _run(tiny_checkpoint, layout, tmp_path, VLLM_CPU_OMP_THREADS_BIND="0|1")
    _same_answers(got, single, 1e-4)  # the all-reduce sums in another order


def test_pipeline_parallel_two_gives_the_single_workers_answers(tiny_checkpoint, single, tmp_path):
    # vLLM's CPU build runs pipeline parallelism only compiled (eager stops at its first step).
    layout = {"kind": "distributed", "pipeline_parallel_size": 2, "gpus": 2, "backend": "mp", "enforce_eager": False}
    got = _run(tiny_checkpoint, layout, tmp_path, VLLM_CPU_OMP_THREADS_BIND="0|1")
    _same_answers(got, single, 1e-4)
