"""Shared GPU boxes, with NVML faked (tests/fake_nvml): CUDA_VISIBLE_DEVICES, busy GPUs, and the driver.

NVML lists every GPU of the machine whatever CUDA_VISIBLE_DEVICES says. These tests describe an 8-GPU
box to the real detection code through a stand-in `pynvml`, then check what selection, replicas, the
plan, doctor and the CLI do with it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from runner.engines.replicas import device_env
from runner.engines.selection import select_engine
from runner.machine import nvidia_driver
from runner.machine.doctor import run_checks
from runner.machine.hardware import HardwareError, SelectionError, detect

FAKE_DIR = Path(__file__).parent / "fake_nvml"
H100 = "NVIDIA H100 80GB HBM3"


def uuid(i: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{i:012d}"


def spec(n: int = 8, busy: dict[int, float] | None = None, driver_version: str = "580.95.05", cuda: int = 13000):
    """n H100s; busy maps a GPU to the GiB a foreign process (pid 4242) holds on it."""
    gpus = [{"name": H100, "total_gib": 80, "processes": [[4242, busy[i]]] if busy and i in busy else []}
            for i in range(n)]  # fmt: skip
    return json.dumps({"driver": driver_version, "cuda": cuda, "gpus": gpus})


@pytest.fixture
def nvml(monkeypatch):
    """nvml(spec_json, mask=None): the fake describes that box to this process."""
    loaded = importlib.util.spec_from_file_location("pynvml", FAKE_DIR / "pynvml.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)

    def _set(box: str, mask: str | None = None) -> None:
        monkeypatch.setenv("FAKE_NVML", box)
        if mask is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)

    return _set


def cli_fake(box: str, mask: str | None = None) -> dict[str, str]:
    env = {"PYTHONPATH": str(FAKE_DIR), "FAKE_NVML": box}
    return env | ({"CUDA_VISIBLE_DEVICES": mask} if mask is not None else {})


# --- CUDA_VISIBLE_DEVICES ---


def test_without_a_mask_every_gpu_is_used_one_replica_each(nvml, compose_cfg):
    nvml(spec(8))
    cfg = compose_cfg("model=qwen25_7b")
    selection = select_engine(cfg.engine, cfg.model, detect())
    assert (selection.kind, selection.data_parallel_size) == ("vllm", 8)
    assert selection.devices == tuple(uuid(i) for i in range(8))


def test_a_mask_by_index_keeps_the_job_on_that_gpu(nvml, compose_cfg):
    nvml(spec(8), mask="3")
    hardware = detect()
    assert [(g.index, g.physical_index, g.device_id) for g in hardware.gpus] == [(0, 3, uuid(3))]
    assert "CUDA_VISIBLE_DEVICES=3" in hardware.summary()
    cfg = compose_cfg("model=qwen25_7b")
    selection = select_engine(cfg.engine, cfg.model, hardware)
    assert (selection.kind, selection.data_parallel_size, selection.devices) == ("vllm", 1, (uuid(3),))


def test_replicas_stay_inside_the_mask_in_its_order(nvml, compose_cfg):
    nvml(spec(8), mask="6,4,5,7")
    cfg = compose_cfg("model=qwen25_7b")
    selection = select_engine(cfg.engine, cfg.model, detect())
    assert selection.data_parallel_size == 4
    pinned = [device_env("vllm", r, 1, selection.devices)["CUDA_VISIBLE_DEVICES"] for r in range(4)]
    assert pinned == [uuid(6), uuid(4), uuid(5), uuid(7)]  # never physical GPUs 0-3


def test_tensor_parallel_takes_gpus_from_the_mask(nvml, compose_cfg):
    nvml(spec(8), mask="4,5,6,7")
    cfg = compose_cfg("model=llama31_70b")  # 141 GB of bf16 weights: tensor parallel over 4 of the 80 GB GPUs
    selection = select_engine(cfg.engine, cfg.model, detect())
    assert (selection.kind, selection.tensor_parallel_size) == ("distributed", 4)
    assert selection.devices == tuple(uuid(i) for i in range(4, 8))


def test_a_mask_by_uuid_or_unique_prefix(nvml):
    nvml(spec(4), mask=f"{uuid(2)},GPU-00000000-0000-0000-0000-000000000001")
    assert [g.physical_index for g in detect().gpus] == [2, 1]
    nvml(json.dumps({"gpus": [{"uuid": "GPU-abc123"}, {"uuid": "GPU-def456"}]}), mask="GPU-def")
    assert [g.device_id for g in detect().gpus] == ["GPU-def456"]


def test_an_empty_mask_means_no_gpu(nvml, compose_cfg):
    nvml(spec(8), mask="")
    hardware = detect()
    assert hardware.gpu_count == 0 and "CUDA_VISIBLE_DEVICES is empty" in hardware.summary()
    cfg = compose_cfg()
    assert select_engine(cfg.engine, cfg.model, hardware).kind == "cpu"


@pytest.mark.parametrize("mask", ["9", "1,9", "GPU-nope", "1,1", "MIG-4d2c"])
def test_a_mask_naming_a_missing_gpu_is_refused(nvml, mask):
    nvml(spec(2), mask=mask)
    with pytest.raises(HardwareError, match=rf"CUDA_VISIBLE_DEVICES={mask} ") as error:
        detect()
    assert f"0 = {uuid(0)}, 1 = {uuid(1)}" in str(error.value)  # what exists, to pick from


def test_the_cli_refuses_a_bad_mask_before_anything_starts(tmp_path):
    result = run_cli("mode=plan", "model=qwen25_7b", f"paths.output_dir={tmp_path}", env=cli_fake(spec(8), "8"))
    assert result.returncode == 2, result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CUDA_VISIBLE_DEVICES=8 names '8', which is no GPU here" in errors[0]
    assert "Traceback" not in result.stdout


# --- busy GPUs ---


def test_a_gpu_another_process_fills_is_not_offered(nvml, compose_cfg):
    nvml(spec(2, busy={0: 70.5}))
    cfg = compose_cfg("model=qwen25_7b")
    selection = select_engine(cfg.engine, cfg.model, detect())
    assert (selection.gpus, selection.data_parallel_size, selection.devices) == (1, 1, (uuid(1),))
    assert len(selection.busy) == 1
    assert "GPU 0 (NVIDIA H100 80GB HBM3): 71.0 of 80.0 GiB in use by pid 4242" in selection.busy[0]
    assert "70.5 GiB" in selection.busy[0]


def test_a_little_foreign_memory_leaves_a_gpu_usable(nvml, compose_cfg):
    nvml(spec(2, busy={0: 4.0}))  # 85% of 80 GiB is still free: vLLM starts
    cfg = compose_cfg("model=qwen25_7b")
    assert select_engine(cfg.engine, cfg.model, detect()).data_parallel_size == 2


def test_every_gpu_busy_is_one_clear_error(nvml, compose_cfg):
    nvml(spec(2, busy={0: 70.5, 1: 40.0}))
    cfg = compose_cfg("model=qwen25_7b")
    with pytest.raises(SelectionError, match="Every GPU this job may use is already in use") as error:
        select_engine(cfg.engine, cfg.model, detect())
    assert "pid 4242" in str(error.value) and "gpu_memory_utilization" in str(error.value)
    # Claiming less makes the half-free GPU usable again.
    cfg = compose_cfg("model=qwen25_7b", "+engine.args.gpu_memory_utilization=0.45")
    assert select_engine(cfg.engine, cfg.model, detect()).devices == (uuid(1),)


def test_the_plan_names_what_is_in_use(tmp_path):
    result = run_cli(
        "mode=plan", "model=qwen25_7b", f"paths.output_dir={tmp_path}", env=cli_fake(spec(2, busy={1: 70.5}))
    )
    assert result.returncode == 0, result.stdout
    assert f"on GPUs: {uuid(0)}" in result.stdout
    assert "not offered, in use: GPU 1 (NVIDIA H100 80GB HBM3): 71.0 of 80.0 GiB in use by pid 4242" in result.stdout
    planned = json.loads(next(tmp_path.rglob("plan.json")).read_text())
    assert planned["models"][0]["engine"]["busy"]


def test_all_gpus_busy_stops_a_job_with_exit_2(tmp_path):
    box = spec(1, busy={0: 75.0})
    result = run_cli("model=qwen25_7b", "limit=1", f"paths.output_dir={tmp_path}", env=cli_fake(box))
    assert result.returncode == 2, result.stdout[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "already in use" in errors[0] and "Traceback" not in result.stdout


# --- the driver against the installed CUDA build ---


def test_a_driver_too_old_for_cuda_13_names_both_and_the_fix(nvml, monkeypatch):
    nvml(spec(1, driver_version="550.54.15", cuda=12040))
    monkeypatch.setattr(nvidia_driver, "torch_cuda", lambda: "13.0")
    with pytest.raises(nvidia_driver.DriverError) as error:
        nvidia_driver.require_compatible()
    message = str(error.value)
    assert "CUDA 13.0" in message and "580" in message and "550.54.15" in message and "12.4" in message
    assert "GPU_CUDA=12.9" in message


def test_doctor_flags_the_old_driver(nvml, monkeypatch, compose_cfg):
    nvml(spec(1, driver_version="550.54.15", cuda=12040))
    monkeypatch.setattr(nvidia_driver, "torch_cuda", lambda: "13.0")
    checks = {c.name: c for c in run_checks(compose_cfg(), detect())}
    assert not checks["nvidia driver"].ok and "550.54.15" in checks["nvidia driver"].detail
    assert "GPU_CUDA=12.9" in checks["nvidia driver"].fix


@pytest.mark.parametrize(
    ("runtime", "version", "cuda", "ok"),
    [("13.0", "580.95.05", "13.0", True), ("12.9", "535.104.05", "12.2", True), ("12.9", "470.82", "11.4", False),
     ("13.0", "575.57", "12.9", False)],
)  # fmt: skip
def test_driver_rules(runtime, version, cuda, ok):
    assert (nvidia_driver.problem(runtime, "torch", nvidia_driver.Driver(version, cuda)) is None) is ok


def test_the_cuda_12_build_is_read_from_vllms_version(monkeypatch):
    monkeypatch.setattr(nvidia_driver.importlib.metadata, "version", lambda dist: "0.32.0+cu129")
    assert nvidia_driver.vllm_cuda() == "12.9"


def test_this_cpu_build_needs_no_driver():
    assert nvidia_driver.torch_cuda() is None and nvidia_driver.needed_cuda() is None
