# Two commands set everything up:  `make run` (the default evaluation) and `make test`.
# Both create/refresh .venv on first use, then prepare the default model (converted once, cached).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# vLLM's CUDA build where an NVIDIA GPU answers, vLLM's CPU build elsewhere. Force with FLAVOR=cpu|gpu.
FLAVOR ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# GPU_CUDA=12.9 (with FLAVOR=gpu): vLLM's CUDA 12.9 build for NVIDIA drivers 525-579; docs/gpu.md.
export GPU_CUDA
STAMP := $(VENV)/.installed-$(FLAVOR)$(if $(GPU_CUDA),-cu$(GPU_CUDA))
REQS := requirements/$(FLAVOR).lock
# Runs here use local files only; set HF_HUB_OFFLINE=0 to let hub models download.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: venv model browser tcmalloc run test test-quick lint lock lock-gpu check-gpu-env mlflow-ui clean

venv: $(STAMP)

$(STAMP): $(REQS) pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(FLAVOR) $(VENV)
	touch $@

model: venv tcmalloc
	$(PY) -m runner.catalog.weights

## The default job: text_geospatial on smollm2_135m, 50 samples per dataset. Other overrides: make run ARGS="limit=200"
ARGS ?= limit=50
run: model
	$(PY) -m runner $(ARGS)

## Headless Chromium for the MLflow UI test (Debian's package, as root; that test skips, saying why, without it).
browser:
	bash scripts/install_debian_package.sh chromium "command -v chromium" "the MLflow UI test will skip"

## tcmalloc for vLLM's CPU build (Debian's package, as root), as vLLM's CPU guide sets up: `python -m runner`
## re-executes itself with it preloaded (runner/machine/allocator.py). Without it, jobs run on glibc's malloc.
tcmalloc:
	@if [ "$(FLAVOR)" = cpu ]; then bash scripts/install_debian_package.sh libtcmalloc-minimal4 "$(PY) -m runner.machine.allocator" \
		"jobs on vLLM's CPU build run on glibc's malloc, which keeps more memory on multiple-choice tasks"; fi

## The test suite, on two pytest-xdist workers (WORKERS=1: one process). Extra pytest arguments: make test PYTEST_ARGS="-k config"
## A file's tests run whole on one worker, longest files first (tests/conftest.py, docs/testing.md).
WORKERS ?= 2
test: model browser
	$(PY) -m pytest $(if $(filter-out 1,$(WORKERS)),-n $(WORKERS) --dist loadgroup --no-loadscope-reorder) $(PYTEST_ARGS)

## The edit-test loop: every test that starts no engine and runs no job through the CLI (docs/testing.md).
test-quick: model
	$(PY) -m pytest --quick $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check runner adapters tests bench
	$(PY) -m mypy  # runner/, adapters/, hydra_plugins/ ([tool.mypy] in pyproject.toml)

## MLflow's UI on the project's store, on loopback only (ssh -L 5000:127.0.0.1:5000 to look from elsewhere).
MLFLOW_PORT ?= 5000
mlflow-ui: venv
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(PY) -m mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
		--artifacts-destination $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

## Re-resolve requirements/cpu.lock, shared.constraints and gpu.lock (needs the package registry).
lock:
	bash scripts/lock.sh all

## Re-resolve only requirements/gpu.lock (Linux x86-64 + CUDA, by uv; seconds, installs nothing).
lock-gpu: venv
	PYTHON=$(PY) bash scripts/lock.sh gpu

## Opt-in: install gpu.lock into .venv-gpu on this machine (GPU or not, ~10 GB), then import the CUDA build
## and run doctor and plans for 1x and 8x H100 with NVML faked. Cost and output: docs/gpu.md.
check-gpu-env: venv
	bash scripts/check_gpu_env.sh

clean:
	rm -rf $(VENV) .venv-gpu .cache
