"""bench/gpu_check.py, the one-shot check of the runner's telemetry on a lent GPU, run on this CPU: the
script itself must work (tiny model, small task) and the runner's output tokens/s must match an outside
stopwatch and the script's own token count. GPU memory checks are n/a here and must not fail the run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import PROJECT_ROOT, cli_env, skip_when_quick


def test_gpu_check_runs_on_cpu(default_model_dir):
    skip_when_quick("runs bench/gpu_check.py's job")
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--model", "tiny_llama"]
        + ["--prompts", "16", "--new-tokens", "16", "--timeout-s", "120"],
        cwd=PROJECT_ROOT,
        env=cli_env({"PYTHONUNBUFFERED": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout
    rate = re.search(
        r"^output tok/s: runner ([\d.]+) .* stopwatch ([\d.]+) .*ratio ([\d.]+): (PASS|FAIL)", result.stdout, re.M
    )
    assert rate, result.stdout
    assert rate.group(4) == "PASS" and float(rate.group(1)) > 0, rate.group(0)
    assert "peak GPU memory: n/a (no NVML)" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["checks"] == {"peak_memory": "n/a", "output_tok_s": "PASS", "latency": "PASS", "released": "n/a"}
    assert summary["output_tokens"]["runner"] == summary["output_tokens"]["counted"] > 0
