"""Memory of a multiple-choice (log-likelihood) job against generation jobs of the same request count.

    python bench/multiple_choice_memory.py [--sizes 1000,10000] [--model tiny_llama] [--keep] [OVERRIDE ...]

For each size N, three real jobs through the CLI, each in a fresh process, on the default engine (the CPU build
of vLLM here, in-process, 1 GiB KV cache, 32-token blocks, prefix caching), `cache=false`:
  - multiple choice: lm-eval's own `arc_easy` on N/4 local ARC-format docs of four choices (N requests),
    chat template, 0-shot: `python -m runner category=science ... +dataset@category.datasets.arc_easy=arc_easy
    category.datasets.arc_easy.local.test=FILE` (bench/multiple_choice.py's documents);
  - generation: N questions of the same kind, as arc_easy writes them ("Question: ...\nAnswer:"), greedy, one
    new token each: the same prompts' prefill, without the log-likelihood machinery (the issue's yardstick);
  - short generation: N distinct short prompts, one new token each (bench/job_scaling.py's task).
The model defaults to `tiny_llama` (conf/model: 14M random weights, the default model's tokenizer and
vocabulary, so the same [tokens, vocabulary] log-probability blocks): the engine, scheduler, sampler and
lm-eval work per request are the default model's, and the whole script took 3.5 minutes here (the
10,000-request multiple-choice job 1). `--model smollm2_135m` runs the default model (31 min at 10,000).
Hydra overrides after the options go to every job, e.g. `+engine.args.max_num_seqs=32` (vLLM's batch).

The job process loads a small `sitecustomize` (PYTHONPATH; the command stays `python -m runner`) that samples
its RSS every 20 ms and marks the end of the engine's load and of lm-eval's engine call (the bridge's
`loglikelihood` or `generate_until`). Printed per job: the malloc it ran on (tcmalloc, which `python -m runner`
preloads on vLLM's CPU build where the machine has it, or glibc's), wall time, RSS once the engine is loaded,
RSS when the call returns, the peak sampled during the call, the job's own peak (telemetry.json, as the summary
shows it), and glibc's main arena (in use / free) at those two points (zeros under tcmalloc). Then, per kind,
the growth from the smallest to the largest job: of the RSS at the call's end and of the peak during it, over
the engine's loaded RSS; and the same for multiple choice over generation. Issue goal, judged at the largest
size: a 10,000-request multiple-choice job on the default engine (`--model smollm2_135m`) does not grow past what
generation on the same kind of questions needs for the same count, at the call's end and at its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import job_scaling  # bench/job_scaling.py: the generation task and its category
import multiple_choice  # bench/multiple_choice.py: the ARC-format documents
from common import hooked_job_env, machine

ROOT = Path(__file__).resolve().parents[1]

HOOK = r"""
import ctypes, importlib.util, json, os, sys, threading, time, atexit

_OUT = os.environ.get("MC_MEMORY_TIMELINE")
if _OUT:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
    _samples, _marks, _malloc = [], [], [None]

    class _Mallinfo(ctypes.Structure):  # glibc's mallinfo2 (>= 2.33): the main arena
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        _libc = ctypes.CDLL("libc.so.6")
        _libc.mallinfo2.restype = _Mallinfo
    except (OSError, AttributeError):
        _libc = None

    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE

    def _arena():
        if _libc is None:
            return None
        info = _libc.mallinfo2()
        return [info.uordblks, info.fordblks]

    def _poll():
        while True:
            _samples.append((time.time(), _rss()))
            time.sleep(0.02)

    threading.Thread(target=_poll, daemon=True).start()
    atexit.register(lambda: json.dump({"samples": _samples, "marks": _marks, "malloc": _malloc[0]}, open(_OUT, "w")))
    _TARGETS = {
        "adapters.lm_eval_model": [("EngineLM", "loglikelihood"), ("EngineLM", "generate_until")],
        "runner.engines.build": [(None, "build_engine")],
    }

    def _wrap(owner, attr, name):
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            _marks.append((time.time(), name, "start", _rss(), _arena()))
            _malloc[0] = "tcmalloc" if "libtcmalloc" in open("/proc/self/maps").read() else "glibc"
            try:
                return fn(*args, **kwargs)
            finally:
                _marks.append((time.time(), name, "end", _rss(), _arena()))

        setattr(owner, attr, wrapped)

    class _Finder:
        def find_spec(self, fullname, path, target=None):
            if fullname not in _TARGETS:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                for owner, attr in _TARGETS[fullname]:
                    _wrap(getattr(module, owner) if owner else module, attr, f"{owner or fullname}.{attr}")

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
"""

MIB = 1024**2
MC, GEN, SHORT = "multiple choice", "generation", "short generation"


def mc_args(work: Path, n: int) -> list[str]:
    """The multiple-choice job: lm-eval's arc_easy on N/4 local ARC-format docs."""
    folder = work / f"mc_{n}"
    folder.mkdir(parents=True)
    files = multiple_choice.write_data(folder, n // 4)
    return [
        "category=science",
        "~category.datasets.gpqa_diamond",
        "~category.datasets.arc_challenge",
        "+dataset@category.datasets.arc_easy=arc_easy",
        f"category.datasets.arc_easy.local.test={files['arc']['test']}",
    ]


def generation_args(work: Path, n: int, *, short: bool) -> list[str]:
    """A generation job of N requests, one new token each: N questions written as arc_easy writes its prompts
    (a seed of their own, so not the multiple-choice job's, whose prefix cache is gone with its process
    anyway), or, `short`, job_scaling's N distinct short prompts."""
    conf = job_scaling.write_category(work / "conf")
    folder = work / f"{'short' if short else 'gen'}_{n}"
    rng = random.Random(1)
    rows = None if short else [
        {"prompt": f"Question: {multiple_choice.sentence(rng, 12, 40)}?\nAnswer:", "answer": "A"} for _ in range(n)
    ]  # fmt: skip
    tasks = job_scaling.write_task(folder, n, 1, rows)
    return ["--config-dir", str(conf), f"category={job_scaling.CATEGORY}", f"paths.tasks_dir={tasks}"]


def job(kind: str, n: int, model: str, work: Path, env: dict[str, str], overrides: list[str]) -> dict:
    args = mc_args(work, n) if kind == MC else generation_args(work, n, short=kind == SHORT)
    run_dir = work / "out" / f"{kind.replace(' ', '_')}_{n}"
    timeline = work / f"timeline_{run_dir.name}.json"
    command = [
        sys.executable, "-m", "runner", *args, f"model={model}", "cache=false", "tracking.system_metrics=false",
        f"paths.output_dir={work / 'out'}", f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env | {"MC_MEMORY_TIMELINE": str(timeline)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=3 * 3600,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}")
    telemetry = json.loads((run_dir / "telemetry.json").read_text())
    data = json.loads(timeline.read_text())
    marks = {(name.rsplit(".", 1)[-1], edge): (t, rss, arena) for t, name, edge, rss, arena in data["marks"]}
    call = "loglikelihood" if kind == MC else "generate_until"
    loaded_at, loaded, loaded_arena = marks[("build_engine", "end")]
    ended_at, ended, ended_arena = marks[(call, "end")]
    during = [rss for t, rss in data["samples"] if loaded_at <= t <= ended_at]
    return {
        "kind": kind,
        "n": n,
        "malloc": data["malloc"],
        "wall": wall,
        "pass_s": ended_at - loaded_at,
        "loaded": loaded / MIB,
        "ended": ended / MIB,
        "peak": max(during + [ended]) / MIB,
        "job_peak": telemetry["peak_rss_gib"] * 1024,
        "arena_loaded": [b / MIB for b in loaded_arena] if loaded_arena else None,
        "arena_ended": [b / MIB for b in ended_arena] if ended_arena else None,
    }


def show(r: dict) -> None:
    arena = ""
    if r["arena_loaded"] and r["arena_ended"]:
        (used0, free0), (used1, free1) = r["arena_loaded"], r["arena_ended"]
        arena = f"; main arena in use {used0:.0f} -> {used1:.0f}, free {free0:.0f} -> {free1:.0f} MiB"
    print(
        f"{r['kind']:>16} {r['n']:>6,} requests, {r['malloc']}: {r['wall']:.1f} s, engine call {r['pass_s']:.1f} s; "
        f"RSS loaded {r['loaded']:.0f}, at the call's end {r['ended']:.0f} (+{r['ended'] - r['loaded']:.0f}), "
        f"peak during it {r['peak']:.0f} (+{r['peak'] - r['loaded']:.0f}), job peak {r['job_peak']:.0f} MiB{arena}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--model", default="tiny_llama")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (run folders, timelines)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job, e.g. +engine.args.max_num_seqs=32")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-mc-memory-"))
    hooks = work / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK)
    env = hooked_job_env(hooks)
    print(machine())
    print(
        f"model {args.model}, default engine, cache=false, overrides {args.overrides or 'none'}; sizes {sizes}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, list[dict]] = {MC: [], GEN: [], SHORT: []}
    for n in sizes:  # interleaved, smallest first
        for kind, rows in results.items():
            rows.append(job(kind, n, args.model, work, env, args.overrides))
            show(rows[-1])
    for kind, rows in results.items() if len(sizes) > 1 else ():
        small, large = rows[0], rows[-1]
        at_end = (large["ended"] - large["loaded"]) - (small["ended"] - small["loaded"])
        peak = (large["peak"] - large["loaded"]) - (small["peak"] - small["loaded"])
        per_k = 1000 / max(1, large["n"] - small["n"])
        print(
            f"{kind}: from {small['n']:,} to {large['n']:,} requests, RSS at the call's end grew {at_end:+.0f} MiB "
            f"({at_end * per_k * 1024:+.0f} KiB per 1,000 requests), the peak during it {peak:+.0f} MiB"
        )
    mc = results[MC][-1]
    for kind in (GEN, SHORT):
        gen = results[kind][-1]
        print(
            f"at {mc['n']:,} requests, multiple choice over {kind}: RSS at the call's end "
            f"{mc['ended'] - mc['loaded']:+.0f} vs {gen['ended'] - gen['loaded']:+.0f} MiB over the loaded engine, "
            f"peak {mc['peak'] - mc['loaded']:+.0f} vs {gen['peak'] - gen['loaded']:+.0f} MiB, job peak "
            f"{mc['job_peak']:.0f} vs {gen['job_peak']:.0f} MiB"
        )
    # The goal, in its words: at the same count, the multiple-choice job's memory does not grow past what
    # generation on the same kind of questions needs. Growth between sizes (above) is printed, not judged:
    # generation's own rise moves about 30 MiB from run to run, so a difference of two such rises is noise.
    gen = results[GEN][-1]
    ok = all(mc[at] - mc["loaded"] <= gen[at] - gen["loaded"] for at in ("ended", "peak"))
    print(
        f"goal (at {mc['n']:,} requests, multiple choice rises over the loaded engine no more than generation on "
        f"the same kind of questions, at the call's end and at its peak): {'MET' if ok else 'NOT MET'}"
    )
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
