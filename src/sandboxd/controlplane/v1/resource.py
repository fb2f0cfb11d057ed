"""A sandbox record as the v1 ``Sandbox`` resource (protocol/v1.md §4.2–4.4).

Why the echo matters: the client rebuilds a handle's tags, containers and volume names from
``spec`` on every Create, Get and List (§0.2 item 5), and reads state, reason, times, exit
code, runner, services and effective resources from ``status``. A sandbox created through
v1beta2 has no v1 spec: it is echoed as the one container it is (image, command, tags).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from sandboxd.controlplane.sandbox_model import SandboxRecord
from sandboxd.controlplane.v1.network import effective_egress
from sandboxd.controlplane.v1.states import v1_state
from sandboxd.controlplane.wire_time import timestamp_or_none as _stamp
from sandboxd.store.v1_resources import V1Resource
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1 import sandbox_pb2

V = sandbox_pb2
MAIN_CONTAINER = "main"


def _runner_spec(record: SandboxRecord) -> runner_pb2.SandboxSpec:
    spec = runner_pb2.SandboxSpec()
    if record.spec:
        try:
            spec.ParseFromString(record.spec)
        except DecodeError:
            return runner_pb2.SandboxSpec()
    return spec


def _spec_of(record: SandboxRecord, runner: runner_pb2.SandboxSpec) -> sandbox_pb2.SandboxSpec:
    """The spec of a sandbox that has no v1 one (made through v1beta2, or adopted)."""
    command = list(runner.command)
    container = V.Container(
        name=MAIN_CONTAINER,
        image=record.image,
        command=command[0] if command else "",
        args=command[1:],
    )
    return V.SandboxSpec(containers=[container], tags=record.tags)


def _resources(cpu_millicores: int, memory: int, gpus: int, gpu_type: str) -> sandbox_pb2.Resources:
    resources = V.Resources(
        cpu=f"{cpu_millicores}m" if cpu_millicores else "",
        memory=str(memory) if memory else "",
    )
    if gpus:
        resources.gpu.CopyFrom(V.Gpu(count=gpus, type=gpu_type))
    return resources


def _services(
    spec: sandbox_pb2.SandboxSpec, record: SandboxRecord
) -> list[sandbox_pb2.ServiceStatus]:
    """Each exposed service; the first carries the published address once there is one."""
    services = []
    for index, service in enumerate(spec.services):
        address = record.service_address if index == 0 else ""
        services.append(
            V.ServiceStatus(
                port=service.port,
                name=service.name,
                protocol=V.SERVICE_PROTOCOL_TCP,
                visibility=service.visibility or V.VISIBILITY_PRIVATE,
                url=f"tcp://{address}" if address else "",
            )
        )
    return services


def sandbox_message(
    record: SandboxRecord, resource: V1Resource | None, reason: str
) -> sandbox_pb2.Sandbox:
    """The v1 resource of ``record`` (``reason``: its status reason, runner health included)."""
    runner = _runner_spec(record)
    if resource is not None:
        spec = V.SandboxSpec.FromString(resource.spec)
    else:
        spec = _spec_of(record, runner)
    state = v1_state(record.status)
    gpus, gpu_type = runner.gpu_count, runner.gpu_type
    limits = _resources(record.cpu_limit_millicores, record.memory_limit_bytes, gpus, gpu_type)
    requests = _resources(
        record.reserved_cpu_millicores, record.reserved_memory_bytes, gpus, gpu_type
    )
    status = V.SandboxStatus(
        state=state,
        state_reason=reason,
        create_time=_stamp(record.created_at),
        start_time=_stamp(record.started_at),
        end_time=_stamp(record.ended_at) if record.terminal else None,
        services=_services(spec, record),
        runner_id=record.runner_id,
        runner_group_id=record.runner_group_id,
        effective_resources=limits,
        effective_resource_requirements=V.ResourceRequirements(requests=requests, limits=limits),
        effective_max_lifetime_seconds=runner.max_lifetime_seconds,
        effective_egress=effective_egress(
            runner.network.egress_type, list(runner.network.egress_cidrs)
        ),
    )
    container_status = V.ContainerStatus(name=MAIN_CONTAINER, state=state)
    if spec.containers:
        container_status.name = spec.containers[0].name or MAIN_CONTAINER
    if record.exit_code is not None and record.terminal:
        status.exit_code = record.exit_code
        container_status.exit_code = record.exit_code
    status.container_statuses.append(container_status)
    if not record.terminal:  # registered volumes it has mounted (protocol/v1.md §12)
        status.attached_volume_ids.extend(v.volume_id for v in spec.volumes if v.volume_id)
    return V.Sandbox(
        sandbox_id=record.sandbox_id,
        spec=spec,
        status=status,
        display_name=resource.display_name if resource is not None else "",
        control=V.CONTROL_PLATFORM,
    )
