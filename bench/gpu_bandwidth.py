"""Decode speed of a model on one GPU against the memory-bandwidth floor, through the runner's HF engine.

    python bench/gpu_bandwidth.py [--model qwen25_7b] [--batches 1 64] [--new-tokens 64] [--device cuda]

For a GPU machine without vLLM (torch and transformers are enough): the model is built from its shipped
architecture (runner/catalog/architectures/<model>/config.json) with random weights in bf16, so no download is
needed. Decoding one step reads every weight once, so at batch 1 a token takes at least
weights bytes / memory bandwidth; a batch of B shares that read, so B tokens per step at best.

The script measures the card's bandwidth with a large device-to-device copy (read + write: 2 x bytes per
copy), then times `generate` at each batch size (prompts of 128 random token ids, greedy, up to
`--new-tokens` new tokens; tokens/s counts the tokens each row really made). It prints the card,
versions, the floor and, last, measured output tokens/s as a fraction of the bandwidth bound at each
batch size.
`--device cpu --model tiny_llama` runs the same measurement on a CPU (a check of the script itself).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def copy_bandwidth(device: str, gib: float = 2.0, repeat: int = 5) -> float:
    """Bytes per second moved by a device-to-device copy (each copy reads and writes the buffer)."""
    import torch

    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeat + 1):  # the first copy warms up (allocation, clocks), not counted
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        times.append(time.perf_counter() - start)
    del source, target
    return 2 * gib * 2**30 / statistics.median(times[1:])


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_folder(name: str) -> Path:
    """The architecture's config with a tokenizer beside it, as `load_format=dummy` runs (runner.catalog.weights)."""
    prepared = ROOT / ".cache" / "dummy" / name
    if (prepared / "config.json").is_file() and (prepared / "tokenizer.json").is_file():
        return prepared  # made earlier (or carried to a machine without the default model's package)
    from runner.catalog.weights import dummy_folder

    return dummy_folder(name, name, ROOT / ".cache")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen25_7b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    import torch

    from runner.engines.base import SamplingSettings
    from runner.engines.hf import HFEngine

    device = args.device
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({platform.machine()})"
    bandwidth = copy_bandwidth(device, gib=2.0 if device.startswith("cuda") else 0.5)
    engine = HFEngine(
        str(model_folder(args.model)),
        dtype=args.dtype,
        load_format="dummy",
        device=device,
        batch_size=max(args.batches),
    )
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    floor_s = weights / bandwidth  # one decode step reads every weight once
    generator = torch.Generator().manual_seed(0)
    vocab = engine.model.config.vocab_size
    results = {}
    for batch in args.batches:
        prompts = torch.randint(0, vocab, (batch, args.prompt_tokens), generator=generator).tolist()
        settings = SamplingSettings(max_tokens=args.new_tokens)
        engine.generate(prompts[:1], SamplingSettings(max_tokens=4))  # warm-up: kernels, allocator
        sync(device)
        start = time.perf_counter()
        completions = engine.generate(prompts, settings)
        sync(device)
        seconds = time.perf_counter() - start
        tokens = sum(c.output_tokens for c in completions)
        results[batch] = (tokens, seconds)

    print()
    versions = f"torch {torch.__version__}, transformers {version('transformers')}"
    print(f"card: {card}; {versions}, Python {platform.python_version()}")
    print(f"model: {args.model} ({args.dtype}, random weights), {weights / 2**30:.2f} GiB of weights")
    print(f"copy bandwidth {bandwidth / 2**30:.0f} GiB/s -> at least {floor_s * 1000:.2f} ms per decode step")
    for batch, (tokens, seconds) in results.items():
        bound = batch / floor_s  # tokens/s if every step cost only the weight read
        measured = tokens / seconds
        print(
            f"batch {batch}: {tokens} tokens in {seconds:.2f} s (prefill of {args.prompt_tokens} tokens included) = "
            f"{measured:.1f} output tok/s; bandwidth bound {bound:.1f} tok/s; measured/bound {measured / bound:.2f}"
        )
    engine.shutdown()


if __name__ == "__main__":
    main()
