"""Joining an existing Ray cluster: its GPUs drive engine selection, and a bad address fails early.

`ray.cluster_utils.Cluster` starts a real multi-node Ray cluster on this machine (a CPU-only head and
two worker nodes that declare 2 H100s each), which is what `ray start` on three machines would give.
"""

from __future__ import annotations

import pytest
from conftest import free_port, run_cli

from runner.engines.selection import select_engine
from runner.engines.vllm_args import vllm_engine_args
from runner.machine.hardware import SelectionError
from runner.machine.ray_cluster import cluster_hardware

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=2, resources={"accelerator_type:H100": 2})
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_the_clusters_gpu_nodes_are_the_hardware(cluster):
    hardware = cluster_hardware(cluster.address)
    assert (hardware.gpu_count, hardware.nodes, hardware.gpus_per_node, hardware.source) == (4, 2, 2, "ray")
    assert {g.name for g in hardware.gpus} == {"H100"} and hardware.gpus[0].total_bytes == 80 * 1024**3
    placement = hardware.notes[0]
    assert placement.startswith(f"Ray cluster at {cluster.address}: ") and placement.count("2x H100") == 2


def test_selection_spreads_a_70b_over_both_nodes_through_rays_executor(cluster, compose_cfg):
    cfg = compose_cfg("model=llama31_70b")
    hardware = cluster_hardware(cluster.address)
    selection = select_engine(cfg.engine, cfg.model, hardware)
    # ~165 GiB over 48 usable GiB per GPU: 4 GPUs, 2 per node -> tensor parallel 2 within, pipeline 2 across.
    assert (selection.kind, selection.tensor_parallel_size, selection.pipeline_parallel_size) == ("distributed", 2, 2)
    assert selection.nodes == 2 and "over 4 of 4 GPUs on 2 nodes" in selection.reason
    args = vllm_engine_args(selection, cfg.model, cfg.engine)
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (2, 2)
    assert args["distributed_executor_backend"] == "ray"


def test_asking_for_more_gpus_than_the_cluster_has_fails_naming_both(cluster, compose_cfg):
    cfg = compose_cfg(
        "model=llama31_70b", "engine=distributed", "engine.tensor_parallel_size=2", "engine.pipeline_parallel_size=4"
    )
    with pytest.raises(SelectionError, match="= 8 GPUs, but only 4 were found"):
        select_engine(cfg.engine, cfg.model, cluster_hardware(cluster.address))


def test_the_plan_reads_the_cluster_named_by_ray_address(cluster, tmp_path):
    result = run_cli("mode=plan", "model=llama31_70b", f"ray.address={cluster.address}", f"paths.output_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4x H100 (80 GiB each)" in result.stdout
    assert "tensor parallel 2 x pipeline parallel 2 over 4 of 4 GPUs on 2 nodes" in result.stdout


def test_an_unreachable_ray_address_fails_fast_with_one_message(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("mode=plan", f"ray.address={address}", f"paths.output_dir={tmp_path}", "ray.connect_timeout_s=5")
    assert result.returncode == 2, result.stdout[-3000:]
    # Fast: the runner's own look at the address refused it, before ray.init (whose core library waits ~20 s
    # for a GCS that does not answer, then ends the whole process).
    assert f"The Ray cluster at ray.address={address} cannot be reached (ConnectionRefusedError" in result.stdout
    assert "ray start --head" in result.stdout and "Traceback" not in result.stdout
