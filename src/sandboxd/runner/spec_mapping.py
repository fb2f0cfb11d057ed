"""From the control plane's ``SandboxSpec`` to the backend's: guardrails, images, network.

Why the runner checks the profile again (rule 3 of DESIGN.md, "checked twice"): the control
plane's scheduler may be stale, buggy or a different version, and the runner is the last
place that can refuse before a process runs. Each ceiling in ``spec.limits`` (0 = none) is
compared with what the spec asks for, and the first that is exceeded is named in a
``CWSANDBOX_PROFILE_MISMATCH`` failure. A spec that asks for *no* limit (0) under a profile
that has a ceiling runs *with* the ceiling: unlimited is more than any ceiling allows, and
clamping keeps the guardrail without refusing specs from control planes that leave a limit
unset.

The local backend cannot hand GPUs to a sandbox yet, so a spec that asks for one is refused
rather than started without it (nothing is simulated, rule 5).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from sandboxd.backends.base import (
    EgressType,
    IngressMode,
    MountedFile,
    NetworkSpec,
    PublishedPort,
    SandboxSpec,
    VolumeBinding,
    VolumeSource,
)
from sandboxd.backends.errors import InvalidSpec
from sandboxd.runner.failures import CommandFailed, failure, invalid_argument
from sandboxd.runner.resources import Reservation
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = [
    "LIFETIME_BACKSTOP_SECONDS",
    "Ceilings",
    "apply_limits",
    "reservation_of",
    "secret_environment",
    "service_address",
    "to_backend_spec",
]

# The backend enforces the lifetime too, this much later than the runner does, so a sandbox
# cannot outlive its lifetime for long even while its runner is down.
LIFETIME_BACKSTOP_SECONDS = 30.0
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """The limits a sandbox actually runs with, after the profile's ceilings were applied."""

    cpu_millicores: int
    memory_bytes: int
    disk_bytes: int
    pids_max: int


def _mismatch(
    spec: runner_pb2.SandboxSpec, field: str, what: str, asked: int, ceiling: int
) -> None:
    profile = spec.profile_name or "(unnamed)"
    raise CommandFailed(
        failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CWSANDBOX_PROFILE_MISMATCH",
            f"sandbox asks for {asked} {what} but profile {profile!r} allows at most {ceiling}",
            field=field,
            requested=asked,
            limit=ceiling,
            profile=profile,
        )
    )


def _ceiled(spec: runner_pb2.SandboxSpec, field: str, what: str, asked: int, ceiling: int) -> int:
    if asked < 0:
        raise invalid_argument(field, "must not be negative")
    if ceiling <= 0:
        return asked
    if asked == 0:
        return ceiling
    if asked > ceiling:
        _mismatch(spec, field, what, asked, ceiling)
    return asked


def apply_limits(spec: runner_pb2.SandboxSpec) -> Ceilings:
    """Re-check ``spec`` against ``spec.limits``; the limits to run with, or CommandFailed."""
    limits = spec.limits
    cpu = _ceiled(
        spec, "cpu_millicores", "millicores of CPU", spec.cpu_millicores, limits.max_cpu_millicores
    )
    memory = _ceiled(
        spec, "memory_bytes", "bytes of memory", spec.memory_bytes, limits.max_memory_bytes
    )
    disk = _ceiled(spec, "disk_bytes", "bytes of disk", spec.disk_bytes, limits.max_disk_bytes)
    pids = _ceiled(spec, "pids_max", "processes", spec.pids_max, limits.max_pids)
    reservation = spec.reservation
    if limits.max_cpu_millicores > 0 and reservation.cpu_millicores > limits.max_cpu_millicores:
        _mismatch(
            spec,
            "reservation.cpu_millicores",
            "millicores of CPU",
            reservation.cpu_millicores,
            limits.max_cpu_millicores,
        )
    if limits.max_memory_bytes > 0 and reservation.memory_bytes > limits.max_memory_bytes:
        _mismatch(
            spec,
            "reservation.memory_bytes",
            "bytes of memory",
            reservation.memory_bytes,
            limits.max_memory_bytes,
        )
    gpus = max(spec.gpu_count, reservation.gpu_count)
    if limits.max_gpu_count > 0 and gpus > limits.max_gpu_count:
        _mismatch(spec, "gpu_count", "GPUs", gpus, limits.max_gpu_count)
    egress = spec.network.egress_type or EgressType.NONE.value
    if limits.egress_types and egress not in limits.egress_types:
        profile = spec.profile_name or "(unnamed)"
        allowed = ", ".join(limits.egress_types)
        raise CommandFailed(
            failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                "CWSANDBOX_PROFILE_MISMATCH",
                f"egress type {egress!r} is not allowed by profile {profile!r} "
                f"(allowed: {allowed})",
                field="network.egress_type",
                requested=egress,
                limit=allowed,
                profile=profile,
            )
        )
    return Ceilings(cpu_millicores=cpu, memory_bytes=memory, disk_bytes=disk, pids_max=pids)


def reservation_of(spec: runner_pb2.SandboxSpec) -> Reservation:
    """What the sandbox takes from the runner's capacity while it lives."""
    r = spec.reservation
    if r.cpu_millicores < 0 or r.memory_bytes < 0 or r.gpu_count < 0:
        raise invalid_argument("reservation", "must not be negative")
    return Reservation(
        cpu_millicores=r.cpu_millicores,
        memory_bytes=r.memory_bytes,
        gpu_count=max(r.gpu_count, spec.gpu_count),
    )


def _network(policy: runner_pb2.NetworkPolicy, blocked: tuple[str, ...]) -> NetworkSpec:
    try:
        egress = EgressType(policy.egress_type or EgressType.NONE.value)
    except ValueError:
        raise invalid_argument(
            "network.egress_type", f"unknown egress type {policy.egress_type!r}"
        ) from None
    ingress: IngressMode | None = None
    ports = tuple(int(p) for p in policy.exposed_ports)
    if ports:
        try:
            ingress = IngressMode(policy.ingress_type or IngressMode.INTERNAL.value)
        except ValueError:
            raise invalid_argument(
                "network.ingress_type", f"unknown ingress type {policy.ingress_type!r}"
            ) from None
    cidrs = tuple(policy.egress_cidrs) if egress is EgressType.ALLOWLIST else ()
    blocked = blocked if egress is not EgressType.NONE else ()
    return NetworkSpec(
        egress=egress, cidrs=cidrs, ingress=ingress, exposed_ports=ports, blocked=blocked
    )


def secret_environment(spec: runner_pb2.SandboxSpec) -> dict[str, str]:
    """The resolved secrets of a start command as variables (errors never quote a value).

    Why they only pass through here: the runner keeps no copy (its records and the
    backend's state hold no environment), so they live in the sandbox's processes only.
    """
    env: dict[str, str] = {}
    for index, secret in enumerate(spec.secret_environment):
        try:
            text = secret.value.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument(
                f"secret_environment[{index}]", f"the value of {secret.env_var!r} is not UTF-8"
            ) from None
        if "\x00" in text:
            raise invalid_argument(
                f"secret_environment[{index}]", f"the value of {secret.env_var!r} contains NUL"
            )
        env[secret.env_var] = text
    return env


def to_backend_spec(
    spec: runner_pb2.SandboxSpec,
    limits: Ceilings,
    *,
    blocked: tuple[str, ...] = (),
) -> SandboxSpec:
    """The backend's spec; InvalidSpec is reported as INVALID_ARGUMENT naming the field.

    ``blocked``: destinations no egress may reach on top of the backend's own list (the
    control plane's addresses, see ``runner/egress.py``).
    """
    if spec.gpu_count > 0:
        raise CommandFailed(
            failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                "",
                f"this runner's backend cannot attach GPUs to a sandbox "
                f"({spec.gpu_count} requested)",
                field="gpu_count",
            )
        )
    lifetime = spec.max_lifetime_seconds
    if lifetime < 0:
        raise invalid_argument("max_lifetime_seconds", "must not be negative")
    kwargs: dict[str, Any] = {
        "sandbox_id": spec.sandbox_id,
        "image": spec.image,
        "env": {**spec.environment, **secret_environment(spec)},
        "workdir": spec.working_dir or "/",
        "cpu_millicores": limits.cpu_millicores or None,
        "memory_bytes": limits.memory_bytes or None,
        "pids_max": limits.pids_max or None,
        "mounted_files": tuple(MountedFile(f.path, f.content) for f in spec.mounted_files),
        "max_lifetime_seconds": lifetime + LIFETIME_BACKSTOP_SECONDS if lifetime else None,
    }
    if spec.command:  # otherwise the backend's keep-alive default
        kwargs["command"] = tuple(spec.command)
    if limits.disk_bytes:
        kwargs["disk_bytes"] = limits.disk_bytes
    try:
        volumes = tuple(volume_binding(v) for v in spec.volumes)
        return SandboxSpec(network=_network(spec.network, blocked), volumes=volumes, **kwargs)
    except InvalidSpec as exc:
        raise invalid_argument(exc.field, str(exc).removeprefix(f"{exc.field}: ")) from None


def volume_source(source: runner_pb2.VolumeSource) -> VolumeSource:
    """The backend's volume source (``InvalidSpec`` naming the bad name)."""
    return VolumeSource(source.organization, source.claim_name, source.sub_path)


def volume_binding(volume: runner_pb2.VolumeBinding) -> VolumeBinding:
    """The backend's persistent volume at its mount path."""
    return VolumeBinding(
        source=volume_source(volume.source),
        mount_path=volume.mount_path,
        read_only=volume.read_only,
        name=volume.name,
    )


def service_address(ports: tuple[PublishedPort, ...], public_host: str) -> str:
    """``HOST:PORT`` of the first published port; wildcard binds use ``public_host``."""
    if not ports:
        return ""
    first = ports[0]
    host = public_host if first.host_ip in _WILDCARD_HOSTS else first.host_ip
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{first.host_port}"
