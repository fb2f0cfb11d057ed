"""Validate a public ``StartSandboxRequest`` into a :class:`SandboxRequest`.

Why a separate step before placement: every malformed field must be refused with
INVALID_ARGUMENT naming that field (DESIGN.md rule 6) before anything is reserved or stored,
and the scheduler then works on plain, already-parsed numbers.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass

import grpc

from sandboxd.controlplane.limits import check_start_request
from sandboxd.controlplane.secret_refs import SecretUse, parse_secret_stores
from sandboxd.controlplane.written_quantities import WrittenQuantities
from sandboxd.errors import ApiError, invalid_argument
from sandboxd.snapshots.scratch_request import ScratchRequest, parse_scratch
from sandboxd.volumes.model import VolumeMountPlan
from sandboxd_protocol.quantities import QuantityError, cpu_millicores, memory_bytes
from sandboxd_protocol.v1beta2 import gateway_pb2

MAX_LIFETIME_SECONDS = 30 * 24 * 3600  # the platform's hard cap (admin-model.md §4)


@dataclass(frozen=True)
class SandboxRequest:
    """What a client asked for, parsed; ``None`` means "take the profile's value"."""

    command: tuple[str, ...]
    image: str
    environment: dict[str, str]
    tags: tuple[str, ...]
    profile_names: tuple[str, ...]
    runner_ids: tuple[str, ...]
    cpu_limit: int | None
    cpu_request: int | None
    memory_limit: int | None
    memory_request: int | None
    gpu_count: int
    gpu_type: str
    egress_mode: str
    ingress_mode: str
    exposed_ports: tuple[int, ...]
    mounted_files: tuple[tuple[str, bytes], ...]
    max_lifetime_seconds: int | None
    # Secrets to inject as environment variables (references; resolved at each start).
    secrets: tuple[SecretUse, ...] = ()
    # The quantities as sent, for messages in the user's units (written_quantities.py).
    written: WrittenQuantities = dataclasses.field(default_factory=WrittenQuantities)
    # Network wishes by kind rather than by a profile's mode name (the v1 protocol): the
    # profile's first mode of this egress type (an allowlist mode only if its CIDRs cover
    # ``egress_cidrs``, which then become the sandbox's allowlist) and of this ingress type.
    egress_type: str = ""
    egress_cidrs: tuple[str, ...] = ()
    ingress_type: str = ""
    scratch: ScratchRequest | None = None  # a scratch file system (sandboxd.snapshots)
    volumes: tuple[VolumeMountPlan, ...] = ()  # persistent volumes, resolved (sandboxd.volumes)

    @property
    def names_profile(self) -> bool:
        """Whether the client chose profiles (changes the rejection reason)."""
        return bool(self.profile_names)


def not_implemented(field: str, what: str) -> ApiError:
    """A request field for a feature this server does not offer yet."""
    return ApiError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{what} ({field}) is not implemented by this sandboxd server",
        reason="CWSANDBOX_NOT_IMPLEMENTED",
        metadata={"field": field},
    )


def _quantity(parse: type | object, value: str, field: str) -> int:
    try:
        return parse(value)  # type: ignore[operator,no-any-return]
    except QuantityError as exc:
        raise invalid_argument(field, str(exc)) from exc


def _resources(
    resources: gateway_pb2.ResourceRequest, prefix: str
) -> tuple[int | None, int | None, gateway_pb2.GpuRequest | None]:
    cpu = _quantity(cpu_millicores, resources.cpu, f"{prefix}.cpu") if resources.cpu else None
    memory = (
        _quantity(memory_bytes, resources.memory, f"{prefix}.memory") if resources.memory else None
    )
    if cpu == 0:
        raise invalid_argument(f"{prefix}.cpu", "must be more than 0")
    if memory == 0:
        raise invalid_argument(f"{prefix}.memory", "must be more than 0")
    gpu = resources.gpu if resources.HasField("gpu") else None
    if gpu is not None and gpu.gpu_count < 0:
        raise invalid_argument(f"{prefix}.gpu.gpu_count", "must not be negative")
    return cpu, memory, gpu


def _written(*parts: gateway_pb2.ResourceRequest) -> WrittenQuantities:
    """The CPU and memory strings of already-validated resource messages, by value."""
    cpu = {cpu_millicores(p.cpu): p.cpu.strip() for p in parts if p.cpu}
    memory = {memory_bytes(p.memory): p.memory.strip() for p in parts if p.memory}
    return WrittenQuantities(cpu=cpu, memory=memory)


def _check_unsupported(request: gateway_pb2.StartSandboxRequest) -> None:
    unsupported = [
        ("s3_mount", "S3 mounts"),
        ("object_storage_access", "object storage access"),
    ]
    for field, what in unsupported:
        if request.HasField(field):
            raise not_implemented(field, what)
    for field, what in [
        ("runner_cluster_secrets", "runner cluster secrets"),
        ("volumes", "volumes"),
    ]:
        if len(getattr(request, field)):
            raise not_implemented(field, what)


def _mounted_files(request: gateway_pb2.StartSandboxRequest) -> tuple[tuple[str, bytes], ...]:
    files: list[tuple[str, bytes]] = []
    for index, mounted in enumerate(request.mounted_files):
        field = f"mounted_files[{index}].mount_path"
        path = mounted.mount_path
        if not path.startswith("/") or "\x00" in path:
            raise invalid_argument(field, f"must be an absolute path (got {path!r})")
        normal = posixpath.normpath(path)
        if normal in ("/", "//") or normal.startswith(("/proc", "/sys", "/dev")):
            raise invalid_argument(field, f"cannot mount a file at {path!r}")
        files.append((normal, mounted.file_content))
    return tuple(files)


def _ports(request: gateway_pb2.StartSandboxRequest) -> tuple[int, ...]:
    ports: list[int] = []
    candidates = [("network.exposed_ports", p) for p in request.network.exposed_ports]
    candidates += [("ports", p.container_port) for p in request.ports]
    for field, port in candidates:
        if not 1 <= port <= 65535:
            raise invalid_argument(field, f"port {port} is not in 1..65535")
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def parse_start_request(request: gateway_pb2.StartSandboxRequest) -> SandboxRequest:
    """Validate every field; raise :class:`ApiError` naming the first bad one."""
    _check_unsupported(request)
    check_start_request(request)  # sizes first (limits.py): nothing below parses a huge field
    if not request.command.strip():
        raise invalid_argument("command", "must name the program to run")
    command = (request.command, *request.args)
    if any("\x00" in part for part in command):
        raise invalid_argument("args", "must not contain NUL characters")
    if "\x00" in request.container_image or request.container_image != (
        request.container_image.strip()
    ):
        raise invalid_argument("container_image", "must be an image name such as python:3.11")

    limits = request.resource_limits if request.HasField("resource_limits") else request.resources
    cpu_limit, memory_limit, gpu_limit = _resources(limits, "resource_limits")
    cpu_request, memory_request, gpu_request = _resources(
        request.resource_requests, "resource_requests"
    )
    written = _written(limits, request.resource_requests)
    if cpu_limit and cpu_request and cpu_request > cpu_limit:
        raise invalid_argument(
            "resource_requests.cpu",
            f"must not be more than resource_limits ({written.show_cpu(cpu_request)} > "
            f"{written.show_cpu(cpu_limit)})",
        )
    if memory_limit and memory_request and memory_request > memory_limit:
        raise invalid_argument(
            "resource_requests.memory",
            f"must not be more than resource_limits ({written.show_memory(memory_request)} > "
            f"{written.show_memory(memory_limit)})",
        )
    gpu = gpu_limit or gpu_request
    gpu_type = gpu.gpu_type if gpu is not None and gpu.WhichOneof("spec") == "gpu_type" else ""

    environment = dict(request.environment_variables)
    for name, value in environment.items():
        if not name or "=" in name or "\x00" in name or "\x00" in value:
            raise invalid_argument(
                "environment_variables", f"{name!r} is not a valid variable name or value"
            )
    if any(not tag.strip() for tag in request.tags):
        raise invalid_argument("tags", "must not contain empty tags")
    if request.max_lifetime_seconds < 0 or request.max_lifetime_seconds > MAX_LIFETIME_SECONDS:
        raise invalid_argument(
            "max_lifetime_seconds", f"must be between 0 and {MAX_LIFETIME_SECONDS}"
        )
    names = [*request.profile_names, *request.profile_ids]
    if any(not name.strip() for name in names):
        raise invalid_argument("profile_names", "must not contain empty names")
    if any(not runner.strip() for runner in request.runner_ids):
        raise invalid_argument("runner_ids", "must not contain empty ids")

    return SandboxRequest(
        command=command,
        image=request.container_image,
        environment=environment,
        tags=tuple(request.tags),
        profile_names=tuple(dict.fromkeys(names)),
        runner_ids=tuple(dict.fromkeys(request.runner_ids)),
        cpu_limit=cpu_limit,
        cpu_request=cpu_request,
        memory_limit=memory_limit,
        memory_request=memory_request,
        gpu_count=gpu.gpu_count if gpu is not None else 0,
        gpu_type=gpu_type,
        egress_mode=request.network.egress_mode,
        ingress_mode=request.network.ingress_mode,
        exposed_ports=_ports(request),
        mounted_files=_mounted_files(request),
        max_lifetime_seconds=request.max_lifetime_seconds or None,
        secrets=parse_secret_stores(request.secret_stores, environment),
        written=written,
        scratch=_file_system(request),
    )


def _file_system(request: gateway_pb2.StartSandboxRequest) -> ScratchRequest | None:
    if not request.HasField("file_system"):
        return None
    fs = request.file_system
    source = ""
    if fs.HasField("file_system_snapshot"):
        source = fs.file_system_snapshot.file_system_snapshot_id
    return parse_scratch(fs.mount_path, fs.size, source, prefix="file_system")
