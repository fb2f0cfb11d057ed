"""Validate a v1 ``CreateSandboxRequest`` into the protocol-neutral :class:`SandboxRequest`.

Why before anything else: every malformed field is refused with INVALID_ARGUMENT naming it
in v1 terms (``spec.containers[0].image``) before anything is reserved or stored, exactly as
the v1beta2 Start does (``start_request.py``), and the scheduler then sees the same plain
request whichever protocol asked.

The v1 resource model on ours: one container per sandbox (its command, args, image, env,
secrets, files and resources); tags, lifetime, network and services from the spec; ``mode``
and ``runner_ids`` choose the runners, each placing with its default profile. The
container's ``secret_stores`` are the v1beta2 ``secret_stores`` (same references, same
stores, injected the same way: :mod:`sandboxd.controlplane.secret_refs`). What we do not
offer yet answers UNIMPLEMENTED with reason ``CWSANDBOX_NOT_IMPLEMENTED`` naming the field
(pull credentials, security contexts, probes, runtime classes, object storage are not
offered). One scratch volume with its mount becomes the request's scratch file system
(:mod:`.scratch_volumes`); registered volumes with their mounts become mount wishes
(:mod:`.volume_mounts`), resolved against the organization's volumes before placement.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from google.protobuf.internal.containers import (
    RepeatedCompositeFieldContainer,
    RepeatedScalarFieldContainer,
)
from google.protobuf.message import Message

from sandboxd.controlplane.limits import (
    MAX_ANNOTATION_BYTES,
    MAX_ANNOTATIONS,
    MAX_IMAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_NAMES,
    MAX_TAG_BYTES,
    MAX_TAGS,
    FieldNames,
    LimitExceeded,
    _check_list,
    _check_map_total,
    check_start,
)
from sandboxd.controlplane.secret_refs import parse_secret_stores
from sandboxd.controlplane.start_request import (
    MAX_LIFETIME_SECONDS,
    SandboxRequest,
    not_implemented,
)
from sandboxd.controlplane.v1.network import network_wish
from sandboxd.controlplane.v1.scratch_volumes import scratch_request
from sandboxd.controlplane.v1.volume_mounts import volume_mounts
from sandboxd.errors import invalid_argument
from sandboxd.volumes.model import MountWish
from sandboxd_protocol.quantities import QuantityError, cpu_millicores, memory_bytes
from sandboxd_protocol.v1 import sandbox_pb2

V = sandbox_pb2
C = "spec.containers[0]"
MAX_REQUEST_ID_CHARS = 128
V1_START = FieldNames(
    f"{C}.args",
    lambda i: f"{C}.command" if i == 0 else f"{C}.args[{i - 1}]",
    f"{C}.environment_variables",
    mounts=f"{C}.files",
    mount_path=lambda i: f"{C}.files[{i}].path",
    mount_content=lambda i: f"{C}.files[{i}].content",
    workdir=f"{C}.working_dir",
)


@dataclass(frozen=True)
class CreatePlan:
    """A valid create: what to place, and the spec to keep and echo back."""

    request: SandboxRequest
    spec: sandbox_pb2.SandboxSpec
    display_name: str
    request_id: str
    digest: str
    """SHA-256 of the whole request but its id: equal for a replay, and only for one."""
    volumes: tuple[MountWish, ...] = ()


def _present(message: Message, name: str) -> bool:
    value = getattr(message, name)
    if isinstance(value, RepeatedCompositeFieldContainer | RepeatedScalarFieldContainer):
        return len(value) > 0
    if isinstance(value, Message) or message.DESCRIPTOR.fields_by_name[name].has_presence:
        return message.HasField(name)
    return bool(value)


def _unoffered(message: Message, fields: list[tuple[str, str]], prefix: str) -> None:
    """UNIMPLEMENTED naming the first of ``fields`` that the request sets."""
    for name, what in fields:
        if _present(message, name):
            raise not_implemented(f"{prefix}.{name}", what)


def _quantity(parse: object, value: str, field: str) -> int:
    try:
        amount: int = parse(value)  # type: ignore[operator]
    except QuantityError as exc:
        raise invalid_argument(field, str(exc)) from exc
    if amount <= 0:
        raise invalid_argument(field, "must be more than 0")
    return amount


@dataclass(frozen=True)
class _Side:
    cpu: int | None
    memory: int | None
    gpu_count: int
    gpu_type: str


def _side(resources: sandbox_pb2.Resources, field: str) -> _Side:
    cpu = _quantity(cpu_millicores, resources.cpu, f"{field}.cpu") if resources.cpu else None
    memory = (
        _quantity(memory_bytes, resources.memory, f"{field}.memory") if resources.memory else None
    )
    gpu = resources.gpu
    if gpu.count < 0:
        raise invalid_argument(f"{field}.gpu.count", "must not be negative")
    if gpu.count and gpu.WhichOneof("selector") == "memory_gb":
        raise invalid_argument(f"{field}.gpu.memory_gb", "GPUs are chosen by type here")
    return _Side(cpu, memory, gpu.count, gpu.type if gpu.count else "")


def _resources(container: sandbox_pb2.Container) -> tuple[_Side, _Side]:
    """(requests, limits); the legacy ``resources`` field counts as both."""
    if container.HasField("resource_requirements"):
        field = f"{C}.resource_requirements"
        both = container.resource_requirements
        requests = _side(both.requests, f"{field}.requests")
        limits = _side(both.limits, f"{field}.limits")
    else:
        requests = limits = _side(container.resources, f"{C}.resources")
    for kind in ("cpu", "memory"):
        asked, cap = getattr(requests, kind), getattr(limits, kind)
        if asked and cap and asked > cap:
            raise invalid_argument(
                f"{C}.resource_requirements.requests.{kind}", "must not be more than the limit"
            )
    return requests, limits


def _files(container: sandbox_pb2.Container) -> tuple[tuple[str, bytes], ...]:
    files: list[tuple[str, bytes]] = []
    for index, mounted in enumerate(container.files):
        field = f"{C}.files[{index}].path"
        path = mounted.path
        if not path.startswith("/") or "\x00" in path:
            raise invalid_argument(field, f"must be an absolute path (got {path!r})")
        normal = posixpath.normpath(path)
        if normal in ("/", "//") or normal.startswith(("/proc", "/sys", "/dev")):
            raise invalid_argument(field, f"cannot mount a file at {path!r}")
        files.append((normal, mounted.content))
    return tuple(files)


def _container(spec: sandbox_pb2.SandboxSpec) -> sandbox_pb2.Container:
    if len(spec.containers) != 1:
        got = len(spec.containers)
        raise invalid_argument(
            "spec.containers", f"exactly one container per sandbox is offered here (got {got})"
        )
    container = spec.containers[0]
    _unoffered(
        container,
        [
            ("image_pull_credentials", "image pull credentials"),
            ("security_context", "security contexts"),
            ("startup_probe", "startup probes"),
            ("working_dir", "working directories"),
        ],
        C,
    )
    return container


def _check_spec_fields(spec: sandbox_pb2.SandboxSpec) -> None:
    _unoffered(
        spec,
        [
            ("network_ids", "networks"),
            ("object_storage_access", "object storage access"),
            ("instance_type", "instance types"),
            ("runtime_class", "runtime classes"),
            ("network_config_id", "network configurations"),
            ("runtime_class_selection", "runtime classes"),
        ],
        "spec",
    )
    if spec.mode not in V.SandboxMode.values():
        raise invalid_argument("spec.mode", f"unknown SandboxMode value {spec.mode}")
    if not 0 <= spec.max_lifetime_seconds <= MAX_LIFETIME_SECONDS:
        raise invalid_argument(
            "spec.max_lifetime_seconds", f"must be between 0 and {MAX_LIFETIME_SECONDS}"
        )
    if any(not tag.strip() for tag in spec.tags):
        raise invalid_argument("spec.tags", "must not contain empty tags")
    if any(not runner.strip() for runner in spec.runner_ids):
        raise invalid_argument("spec.runner_ids", "must not contain empty ids")
    try:
        _check_list("spec.tags", spec.tags, MAX_TAGS, MAX_TAG_BYTES, "tags")
        _check_list("spec.runner_ids", spec.runner_ids, MAX_NAMES, MAX_NAME_BYTES, "ids")
        _check_map_total(
            "spec.annotations", spec.annotations, MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES
        )
    except LimitExceeded as exc:
        raise exc.api_error() from None


def _argv(container: sandbox_pb2.Container) -> tuple[str, ...]:
    if not container.command.strip():
        raise invalid_argument(f"{C}.command", "must name the program to run")
    argv = (container.command, *container.args)
    if any("\x00" in part for part in argv):
        raise invalid_argument(f"{C}.args", "must not contain NUL characters")
    return argv


def _environment(container: sandbox_pb2.Container) -> dict[str, str]:
    environment = dict(container.environment_variables)
    for name, value in environment.items():
        if not name or "=" in name or "\x00" in name or "\x00" in value:
            raise invalid_argument(
                f"{C}.environment_variables", f"{name!r} is not a valid variable name or value"
            )
    return environment


def _image(container: sandbox_pb2.Container) -> str:
    image = container.image
    if "\x00" in image or image != image.strip() or len(image.encode()) > MAX_IMAGE_BYTES:
        raise invalid_argument(f"{C}.image", "must be an image name such as python:3.11")
    return image


def echoed_spec(spec: sandbox_pb2.SandboxSpec) -> sandbox_pb2.SandboxSpec:
    """The spec as it is kept and echoed: mounted files keep their paths, not their bytes.

    The client rebuilds tags, containers and volume names from the echo (v1.md §0.2 item
    5); file contents would only make every Get and List carry up to 32 MiB again.
    """
    kept = V.SandboxSpec()
    kept.CopyFrom(spec)
    for container in kept.containers:
        for mounted in container.files:
            mounted.content = b""
    return kept


def parse_create(request: sandbox_pb2.CreateSandboxRequest) -> CreatePlan:
    """Validate every field; raise :class:`ApiError` naming the first bad one."""
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        raise invalid_argument("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
    if not request.HasField("sandbox"):
        raise invalid_argument("sandbox", "is required (the sandbox to create, with its spec)")
    sandbox = request.sandbox
    if len(sandbox.display_name) > MAX_NAME_BYTES:
        raise invalid_argument("sandbox.display_name", f"at most {MAX_NAME_BYTES} characters")
    spec = sandbox.spec
    _check_spec_fields(spec)
    container = _container(spec)
    image = _image(container)
    argv = _argv(container)
    environment = _environment(container)
    files = _files(container)
    try:
        check_start(argv, environment, [(p, len(c)) for p, c in files], V1_START)
    except LimitExceeded as exc:
        raise exc.api_error() from None
    requests, limits = _resources(container)
    scratch = scratch_request(spec, C)
    volumes = volume_mounts(spec, C)
    wish = network_wish(spec)
    gpu_count = max(requests.gpu_count, limits.gpu_count)
    sandbox_request = SandboxRequest(
        command=argv,
        image=image,
        environment=environment,
        tags=tuple(spec.tags),
        profile_names=(),
        runner_ids=tuple(dict.fromkeys(spec.runner_ids)),
        cpu_limit=limits.cpu,
        cpu_request=requests.cpu if container.HasField("resource_requirements") else None,
        memory_limit=limits.memory,
        memory_request=requests.memory if container.HasField("resource_requirements") else None,
        gpu_count=gpu_count,
        gpu_type=limits.gpu_type or requests.gpu_type,
        egress_mode="",
        ingress_mode="",
        exposed_ports=wish.exposed_ports,
        mounted_files=files,
        max_lifetime_seconds=spec.max_lifetime_seconds or None,
        egress_type=wish.egress_type,
        egress_cidrs=wish.egress_cidrs,
        ingress_type=wish.ingress_type,
        scratch=scratch,
        secrets=parse_secret_stores(container.secret_stores, environment, f"{C}.secret_stores"),
    )
    return CreatePlan(
        request=sandbox_request,
        spec=echoed_spec(spec),
        display_name=sandbox.display_name,
        request_id=request.request_id,
        digest=hashlib.sha256(sandbox.SerializeToString(deterministic=True)).hexdigest(),
        volumes=volumes,
    )
