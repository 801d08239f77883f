"""An existing Ray cluster as the job's hardware: its nodes' GPUs, for engine selection and the record.

The runner joins a cluster someone started (`ray start --head` on one node, `ray start --address=...`
on the others); it never starts or schedules one itself. vLLM's Ray executor then places the tensor-
and pipeline-parallel workers on it, through the same connection.

Ray reports GPUs per node as a count (`GPU`) and a type (`accelerator_type:H100`), not their memory,
so the memory of known types comes from the table below; `ray.gpu_memory_gib` sets it for others.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from runner.machine.hardware import GPU, GiB, Hardware, SelectionError

if TYPE_CHECKING:
    from runner.config.schema import RayConfig, RunnerConfig

log = logging.getLogger(__name__)

# Memory of the accelerator types Ray detects (its `accelerator_type:<X>` resource), in GiB.
ACCELERATOR_GIB = {
    "H200": 141,
    "H100": 80,
    "H800": 80,
    "H20": 96,
    "GH200": 96,
    "B200": 180,
    "A100-80G": 80,
    "A100-40G": 40,
    "A100": 80,
    "A800": 80,
    "L40S": 48,
    "L40": 48,
    "L4": 24,
    "A10G": 24,
    "A10": 24,
    "V100": 32,
    "T4": 16,
}


def cluster_address(ray: RayConfig) -> str | None:
    """`ray.address` from the config, else RAY_ADDRESS; None means this machine alone."""
    return ray.address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str, timeout_s: float) -> None:
    """Join the cluster, failing within `timeout_s` with one clear message if it cannot be reached."""
    import ray

    if ray.is_initialized():
        return

    def unreachable(why: str) -> SelectionError:
        return SelectionError(
            f"The Ray cluster at ray.address={address} cannot be reached ({why}). Start it with `ray start --head` "
            "on one node and `ray start --address=<head>:6379` on the others, or unset ray.address / RAY_ADDRESS "
            "to run on this machine alone."
        )

    # Ray's core library ends the whole process after ~20 s when its GCS does not answer, so look first.
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or address, int(port or 6379)), timeout=timeout_s).close()
        except (OSError, ValueError) as exc:
            raise unreachable(f"{type(exc).__name__}: {exc}") from exc
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...: all mean "not reachable"
        first_line = str(exc).splitlines()[0][:200] if str(exc) else "no answer"
        raise unreachable(f"{type(exc).__name__}: {first_line}") from exc


def job_hardware(cfg: RunnerConfig) -> Hardware:
    """What a job runs on: the Ray cluster when one is named, else this machine."""
    address = cluster_address(cfg.ray)
    if address is None:
        from runner.machine.hardware import detect

        return detect()
    return cluster_hardware(address, gpu_memory_gib=cfg.ray.gpu_memory_gib, timeout_s=cfg.ray.connect_timeout_s)


def cluster_hardware(address: str, *, gpu_memory_gib: float | None = None, timeout_s: float = 20) -> Hardware:
    """The cluster's GPU nodes as one `Hardware`; `placement` says which node has which GPUs."""
    import ray

    connect(address, timeout_s)
    gpus: list[GPU] = []
    placement = []
    gpu_nodes = 0
    host_memory = 0
    cpus = 0
    for node in sorted(ray.nodes(), key=lambda n: n.get("NodeManagerAddress", "")):
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        cpus += int(resources.get("CPU", 0))
        host_memory += int(resources.get("memory", 0))
        count = int(resources.get("GPU", 0))  # absent, not 0, on GPU-less nodes
        if count == 0:
            continue
        kinds = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
        kind = kinds[0] if kinds else "GPU"
        memory = gpu_memory_gib or ACCELERATOR_GIB.get(kind)
        if memory is None:
            raise SelectionError(
                f"The Ray cluster's node {node.get('NodeManagerAddress')} has {count} GPU(s) of type {kind!r}, whose "
                "memory Ray does not report. Set ray.gpu_memory_gib=<GiB per GPU>."
            )
        gpu_nodes += 1
        placement.append(f"{node.get('NodeManagerAddress')}: {count}x {kind}")
        for _ in range(count):
            gpus.append(GPU(len(gpus), kind, int(memory * GiB), int(memory * GiB)))
    counts = {p.split(": ")[1].split("x")[0] for p in placement}
    notes = [f"Ray cluster at {address}: " + ("; ".join(placement) or "no GPU nodes")]
    if len(counts) > 1:
        notes.append("nodes have different GPU counts; selection counts gpu_count // nodes per node")
    hardware = Hardware(
        gpus=tuple(gpus),
        host_memory_bytes=host_memory,
        cpu_count=cpus,
        source="ray",
        notes=tuple(notes),
        nodes=max(gpu_nodes, 1),
    )
    log.info("%s", notes[0])
    return hardware
