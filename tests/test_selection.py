"""Engine choice from hardware and model size, and the vLLM EngineArgs a job hands to vLLM."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runner.engines.selection import estimate_memory, select_engine
from runner.engines.vllm_args import vllm_engine_args
from runner.machine.hardware import GPU, Hardware, SelectionError, detect

GiB = 1024**3
CPU_BOX = Hardware(gpus=(), host_memory_bytes=24 * GiB, cpu_count=2)


def box(n_gpus: int, nodes: int = 1, gib: int = 80) -> Hardware:
    gpus = tuple(GPU(i, "NVIDIA H100 80GB HBM3", gib * GiB, gib * GiB) for i in range(n_gpus))
    return Hardware(gpus=gpus, host_memory_bytes=512 * GiB, cpu_count=64, nodes=nodes)


def sized(weights_gb: float, compose_cfg, dtype: str = "bfloat16"):
    """A model whose bf16 weights take `weights_gb` GB."""
    cfg = compose_cfg("model=qwen25_7b")
    model = OmegaConf.merge(cfg.model, {"name": f"m{weights_gb}", "params_b": weights_gb / 2, "dtype": dtype})
    return cfg.engine, model


def test_auto_uses_vllms_cpu_build_without_a_gpu(compose_cfg):
    cfg = compose_cfg()
    selection = select_engine(cfg.engine, cfg.model, CPU_BOX)
    assert selection.kind == "cpu" and selection.gpus == 0
    assert "no GPU" in selection.reason


def test_auto_uses_vllm_on_one_gpu_when_the_model_fits(compose_cfg):
    cfg = compose_cfg("model=qwen25_7b")
    selection = select_engine(cfg.engine, cfg.model, box(1))
    assert (selection.kind, selection.gpus) == ("vllm", 1)


def test_forcing_the_gpu_engine_without_a_gpu_fails_before_loading(compose_cfg):
    cfg = compose_cfg("engine=vllm")
    with pytest.raises(SelectionError, match="none was found"):
        select_engine(cfg.engine, cfg.model, CPU_BOX)


def test_detect_reports_this_machine():
    hardware = detect()
    assert hardware.cpu_count >= 1 and hardware.host_memory_bytes > 0
    assert "CPU cores" in hardware.summary()


def test_engine_args_combine_platform_defaults_model_facts_and_user_overrides(compose_cfg):
    cfg = compose_cfg("+engine.args.max_num_seqs=8", "+engine.args.block_size=64")
    args = vllm_engine_args(select_engine(cfg.engine, cfg.model, CPU_BOX), cfg.model, cfg.engine)
    assert args["dtype"] == "float32"  # from the model
    assert args["enforce_eager"] is True and args["kv_cache_memory_bytes"] == GiB  # CPU defaults
    assert args["max_num_seqs"] == 8 and args["block_size"] == 64  # the user's words win (the CPU default: 32)
    assert args["trust_remote_code"] is False
    assert "revision" not in args  # a converted local folder has no hub revision


def test_gpu_defaults_cap_max_model_len_at_the_models_own(compose_cfg):
    cfg = compose_cfg("model=qwen25_7b", "model.max_model_len=16384")
    args = vllm_engine_args(select_engine(cfg.engine, cfg.model, box(1)), cfg.model, cfg.engine)
    assert args["max_model_len"] == 16384
    assert args["gpu_memory_utilization"] == 0.85 and args["max_num_seqs"] == 64
    assert args["enable_prefix_caching"] is True
    assert args["revision"] == "main" and args["dtype"] == "bfloat16"


# --- memory-based choice on 80 GB GPUs ---


@pytest.mark.parametrize("weights_gb", [5, 25])
def test_models_that_fit_one_80gb_gpu_get_the_lightweight_engine(compose_cfg, weights_gb):
    engine, model = sized(weights_gb, compose_cfg)
    selection = select_engine(engine, model, box(8))
    # One GPU holds it; the other seven hold replicas that share the requests.
    assert (selection.kind, selection.tensor_parallel_size, selection.data_parallel_size) == ("vllm", 1, 8)
    assert selection.gpus == 8 and "8 data-parallel replicas" in selection.reason
    assert "fits one GPU" in selection.reason


def test_a_50gb_model_goes_distributed_on_the_fewest_gpus(compose_cfg):
    engine, model = sized(50, compose_cfg)
    selection = select_engine(engine, model, box(8))
    assert selection.kind == "distributed"
    assert (selection.tensor_parallel_size, selection.pipeline_parallel_size, selection.gpus) == (2, 1, 2)
    assert "does not fit one GPU" in selection.reason
    args = vllm_engine_args(selection, model, engine)
    assert (args["tensor_parallel_size"], args["distributed_executor_backend"]) == (2, "mp")


def test_a_70b_model_uses_tensor_parallel_four_on_h100s(compose_cfg):
    cfg = compose_cfg("model=llama31_70b")
    selection = select_engine(cfg.engine, cfg.model, box(8))
    assert (selection.kind, selection.tensor_parallel_size) == ("distributed", 4)
    assert selection.memory.weights_bytes == pytest.approx(70.6e9 * 2)


def test_more_than_one_node_adds_pipeline_parallelism_over_ray(compose_cfg):
    engine, model = sized(810, compose_cfg)  # a 405B model in bf16
    selection = select_engine(engine, model, box(32, nodes=4))
    assert (selection.tensor_parallel_size, selection.pipeline_parallel_size) == (8, 3)
    assert selection.nodes == 3
    args = vllm_engine_args(selection, model, engine)
    assert args["distributed_executor_backend"] == "ray"
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (8, 3)


def test_a_model_bigger_than_all_memory_fails_before_anything_loads(compose_cfg):
    engine, model = sized(810, compose_cfg)
    with pytest.raises(SelectionError, match="more than all GPU memory found"):
        select_engine(engine, model, box(1))


def test_a_model_bigger_than_host_memory_fails_on_a_cpu_box(compose_cfg):
    engine, model = sized(140, compose_cfg)
    with pytest.raises(SelectionError, match="24 GiB of RAM"):
        select_engine(engine, model, CPU_BOX)


def test_quantization_sets_bytes_per_parameter(compose_cfg):
    awq = compose_cfg("model=qwen25_7b_awq")
    fp8 = compose_cfg("model=llama31_8b_fp8")
    assert estimate_memory(awq.model, awq.engine.selection).bytes_per_param == 0.5
    assert estimate_memory(fp8.model, fp8.engine.selection).bytes_per_param == 1.0


def test_forced_sizes_beyond_the_gpus_found_fail_naming_both(compose_cfg):
    cfg = compose_cfg("engine=distributed", "engine.tensor_parallel_size=8", "model=llama31_70b")
    with pytest.raises(SelectionError, match="8 GPUs, but only 4 were found"):
        select_engine(cfg.engine, cfg.model, box(4))


def test_forcing_one_gpu_for_a_model_that_needs_more_fails_with_the_fix(compose_cfg):
    cfg = compose_cfg("engine=vllm", "model=qwen25_72b")
    with pytest.raises(SelectionError, match="engine=distributed"):
        select_engine(cfg.engine, cfg.model, box(8))


def test_thresholds_come_from_config(compose_cfg):
    engine, model = sized(25, compose_cfg)
    engine = OmegaConf.merge(engine, {"selection": {"usable_gpu_fraction": 0.3}})
    assert select_engine(engine, model, box(8)).kind == "distributed"


def test_engine_kinds_can_be_forced(compose_cfg):
    engine, model = sized(5, compose_cfg)
    assert select_engine(OmegaConf.merge(engine, {"kind": "distributed"}), model, box(8)).kind == "distributed"
    assert select_engine(OmegaConf.merge(engine, {"kind": "cpu"}), model, box(8)).kind == "cpu"


# --- data parallelism ---


def test_data_parallel_size_can_be_set_or_turned_off(compose_cfg):
    engine, model = sized(15, compose_cfg)
    two = select_engine(OmegaConf.merge(engine, {"data_parallel_size": 2}), model, box(8))
    assert (two.data_parallel_size, two.gpus) == (2, 2)
    one = select_engine(OmegaConf.merge(engine, {"data_parallel_size": 1}), model, box(8))
    assert (one.data_parallel_size, one.gpus, one.reason) == (1, 1, one.reason.split(";")[0])


def test_replicas_of_a_tensor_parallel_engine_each_get_their_own_gpus(compose_cfg):
    engine, model = sized(140, compose_cfg)  # a 70B in bf16: tensor parallel 4
    selection = select_engine(OmegaConf.merge(engine, {"data_parallel_size": 2}), model, box(8))
    assert (selection.tensor_parallel_size, selection.data_parallel_size, selection.gpus) == (4, 2, 8)


def test_more_replicas_than_devices_fail_naming_both(compose_cfg):
    engine, model = sized(15, compose_cfg)
    with pytest.raises(SelectionError, match="data_parallel_size=16 replicas x 1 GPU.*this node has 8"):
        select_engine(OmegaConf.merge(engine, {"data_parallel_size": 16}), model, box(8))
    cpu = compose_cfg("engine=cpu", "model=smollm2_135m", "engine.data_parallel_size=3")
    with pytest.raises(SelectionError, match="one CPU core per replica, but 2 were found"):
        select_engine(cpu.engine, cpu.model, CPU_BOX)


def test_a_ray_cluster_gets_no_automatic_replicas(compose_cfg):
    engine, model = sized(15, compose_cfg)
    assert select_engine(engine, model, box(8, nodes=2)).data_parallel_size == 1
    with pytest.raises(SelectionError, match="replicas on this node only"):
        select_engine(OmegaConf.merge(engine, {"data_parallel_size": 2}), model, box(8, nodes=2))


def test_parallel_sizes_given_as_engine_args_size_the_job_like_the_engines_own(compose_cfg):
    cfg = compose_cfg("+engine.args.tensor_parallel_size=4")
    selection = select_engine(cfg.engine, cfg.model, box(8))  # a 0.1B model: alone it would take one GPU
    assert (selection.kind, selection.tensor_parallel_size, selection.gpus) == ("distributed", 4, 4)
    assert len(selection.devices) == 4  # the GPUs vLLM's 4 workers are pinned to
    with pytest.raises(SelectionError, match=r"tensor_parallel_size=4 x pipeline_parallel_size=1 = 4 GPUs, but only 2"):
        select_engine(cfg.engine, cfg.model, box(2))
    cfg = compose_cfg("engine=cpu", "+engine.args.pipeline_parallel_size=2")
    with pytest.raises(SelectionError, match=r"^engine.args.pipeline_parallel_size=2 conflicts with engine=cpu"):
        select_engine(cfg.engine, cfg.model, CPU_BOX)


def test_a_one_process_executor_asked_to_run_several_workers_is_refused_before_loading(compose_cfg):
    from runner.config.schema import ConfigError
    from runner.engines.vllm_args import vllm_engine_args

    cfg = compose_cfg(
        "engine=distributed", "engine.tensor_parallel_size=2", "+engine.args.distributed_executor_backend=uni"
    )
    selection = select_engine(cfg.engine, cfg.model, box(2))
    with pytest.raises(ConfigError, match=r"distributed_executor_backend=uni runs one worker .* asks for 2"):
        vllm_engine_args(selection, cfg.model, cfg.engine)
    assert (
        vllm_engine_args(
            selection, cfg.model, compose_cfg("engine=distributed", "engine.tensor_parallel_size=2").engine
        )["distributed_executor_backend"]
        == "mp"
    )
