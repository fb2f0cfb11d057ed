"""What a placement makes of a request: the runner's instructions and the record's fields.

Why a module of its own: a sandbox's spec is built when it is first placed
(:meth:`~sandboxd.controlplane.lifecycle.Lifecycle.start`), for the warm pools' slots
(``warm_pools.py``), and again when a start that failed because of its runner is moved to
another runner (``start_moves.py``); all three must resolve a request the same way.
"""

from __future__ import annotations

from typing import Any

from sandboxd.controlplane.placement import Placement
from sandboxd.controlplane.secret_refs import references
from sandboxd.controlplane.start_request import SandboxRequest
from sandboxd.snapshots.scratch_request import scratch_volume
from sandboxd_protocol.sandboxd_v1 import runner_pb2


def build_spec(
    sandbox_id: str, request: SandboxRequest, placement: Placement
) -> runner_pb2.SandboxSpec:
    """The runner's instructions: the request resolved against the chosen profile."""
    ceilings = placement.profile.quantities  # parsed once, when the configuration loaded
    spec = runner_pb2.SandboxSpec(
        sandbox_id=sandbox_id,
        image=placement.image,
        command=request.command,
        environment=request.environment,
        cpu_millicores=placement.cpu_limit,
        memory_bytes=placement.memory_limit,
        gpu_count=placement.gpu_count,
        gpu_type=placement.gpu_type,
        disk_bytes=placement.disk_bytes,
        pids_max=placement.pids_max,
        network=runner_pb2.NetworkPolicy(
            egress_mode=placement.egress_mode,
            egress_type=placement.egress_type.value,
            egress_cidrs=placement.egress_cidrs,
            ingress_mode=placement.ingress_mode,
            ingress_type=placement.ingress_type,
            exposed_ports=request.exposed_ports,
        ),
        mounted_files=[runner_pb2.MountedFile(path=p, content=c) for p, c in request.mounted_files],
        max_lifetime_seconds=placement.max_lifetime_seconds,
        profile_name=placement.profile.profile_name,
        reservation=runner_pb2.Reservation(
            cpu_millicores=placement.cpu_request,
            memory_bytes=placement.memory_request,
            gpu_count=placement.gpu_count,
        ),
        limits=runner_pb2.ProfileLimits(
            max_cpu_millicores=ceilings.max_cpu_millicores or 0,
            max_memory_bytes=ceilings.max_memory_bytes or 0,
            max_gpu_count=ceilings.max_gpu_count or 0,
            max_disk_bytes=ceilings.max_disk_bytes or 0,
            max_pids=ceilings.max_pids or 0,
            egress_types=ceilings.egress_types,
        ),
        secret_references=references(request.secrets),
    )
    if request.scratch is not None:
        spec.scratch.CopyFrom(scratch_volume(request.scratch, ceilings.max_disk_bytes))
    for volume in request.volumes:
        source = runner_pb2.VolumeSource(
            organization=volume.organization,
            claim_name=volume.claim_name,
            sub_path=volume.sub_path,
        )
        spec.volumes.add(
            name=volume.name,
            volume_id=volume.volume_id,
            source=source,
            mount_path=volume.mount_path,
            read_only=volume.read_only,
        )
    return spec


def placed_fields(placement: Placement, spec: runner_pb2.SandboxSpec) -> dict[str, Any]:
    """The record fields that say where a sandbox was placed and what it reserves there.

    With its serialized ``spec``; :class:`~sandboxd.controlplane.sandbox_model.SandboxRecord`
    takes them as keywords.
    """
    return {
        "runner_id": placement.runner.runner_id,
        "runner_group_id": placement.runner.runner_group_id,
        "profile_name": placement.profile.profile_name,
        "image": placement.image,
        "spec": spec.SerializeToString(),
        "applied_egress_mode": placement.egress_mode,
        "applied_ingress_mode": placement.ingress_mode,
        "reserved_cpu_millicores": placement.cpu_request,
        "reserved_memory_bytes": placement.memory_request,
        "reserved_gpu_count": placement.gpu_count,
        "cpu_limit_millicores": placement.cpu_limit,
        "memory_limit_bytes": placement.memory_limit,
    }
