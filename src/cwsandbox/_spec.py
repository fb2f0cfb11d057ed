"""Turning ``Sandbox.run``'s arguments plus ``SandboxDefaults`` into a Start request (§4.2).

Everything is validated here, when the ``Sandbox`` object is made, so bad input raises
``TypeError``/``ValueError`` in the caller's frame before any RPC. The request is built once
and kept; starting sends exactly this message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cwsandbox._attachments import FileSystemSnapshotOptions, Secret, secret_stores, snapshot_mount
from cwsandbox._defaults import SandboxDefaults, string_tuple
from cwsandbox._network import NetworkOptions
from cwsandbox._resources import ResourceOptions, resource_messages
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["StartOptions", "build_start_request"]


@dataclass(frozen=True, kw_only=True)
class StartOptions:
    """The per-call arguments of ``Sandbox.run`` / ``Sandbox(...)`` (``None`` = not given)."""

    command: str | None = None
    args: Sequence[str] | None = None
    container_image: str | None = None
    tags: Sequence[str] | None = None
    max_lifetime_seconds: float | None = None
    profile_ids: Sequence[str] | None = None
    profile_names: Sequence[str] | None = None
    runner_ids: Sequence[str] | None = None
    resources: ResourceOptions | Mapping[str, Any] | None = None
    mounted_files: Sequence[Mapping[str, Any]] | None = None
    s3_mount: Mapping[str, Any] | None = None
    ports: Sequence[Mapping[str, Any]] | None = None
    network: NetworkOptions | Mapping[str, Any] | None = None
    file_system_snapshot: FileSystemSnapshotOptions | Mapping[str, Any] | None = None
    max_timeout_seconds: int | None = None
    environment_variables: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    secrets: Sequence[Secret | Mapping[str, Any]] | None = None


def _command(opts: StartOptions, defaults: SandboxDefaults) -> tuple[str, list[str]]:
    if opts.command is None:
        args = defaults.args if opts.args is None else opts.args
        command = defaults.command
    else:
        command, args = opts.command, opts.args or ()
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be a non-empty string")
    if isinstance(args, str | bytes):
        raise TypeError("args must be a sequence of strings, not a bare string")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"command arguments must be strings, got {arg!r}")
    return command, list(args)


def _mounted_file(item: Mapping[str, Any]) -> gw.MountedFile:
    if not isinstance(item, Mapping) or set(item) - {"mount_path", "file_content"}:
        raise TypeError("mounted_files entries must be dicts with mount_path and file_content")
    content = item.get("file_content", b"")
    if isinstance(content, str):
        content = content.encode()
    if not isinstance(content, bytes | bytearray):
        raise TypeError("mounted file content must be bytes or str")
    path = item.get("mount_path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"mounted file mount_path must be an absolute path, got {path!r}")
    return gw.MountedFile(mount_path=path, file_content=bytes(content))


def _positive_int(value: float | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return max(1, int(value))


def build_start_request(opts: StartOptions, defaults: SandboxDefaults) -> gw.StartSandboxRequest:
    """The Start request for ``opts`` on top of ``defaults``; raises on invalid input."""
    command, args = _command(opts, defaults)
    image = opts.container_image if opts.container_image is not None else defaults.container_image
    if not isinstance(image, str) or not image.strip():
        raise ValueError("container_image must be a non-empty string")
    req = gw.StartSandboxRequest(
        command=command,
        args=args,
        tags=defaults.merge_tags(opts.tags),
        container_image=image,
        environment_variables=defaults.merge_environment_variables(opts.environment_variables),
        pod_annotations=defaults.merge_annotations(opts.annotations),
    )
    lifetime = _positive_int(
        opts.max_lifetime_seconds
        if opts.max_lifetime_seconds is not None
        else defaults.max_lifetime_seconds,
        "max_lifetime_seconds",
    )
    if lifetime is not None:
        req.max_lifetime_seconds = lifetime
    max_timeout = _positive_int(opts.max_timeout_seconds, "max_timeout_seconds")
    if max_timeout is not None:
        req.max_timeout_seconds = max_timeout
    for name in ("profile_ids", "profile_names", "runner_ids"):
        given = getattr(opts, name)
        chosen = string_tuple(given if given is not None else getattr(defaults, name), name)
        if chosen:
            getattr(req, name).extend(chosen)

    resources = opts.resources if opts.resources is not None else defaults.resources
    limits, requests = resource_messages(resources)
    if limits is not None and requests is not None:
        req.resource_limits.CopyFrom(limits)
        req.resource_requests.CopyFrom(requests)

    network = NetworkOptions.coerce(opts.network if opts.network is not None else defaults.network)
    if network is not None:
        req.network.CopyFrom(network.to_proto())

    if opts.mounted_files:
        req.mounted_files.extend(_mounted_file(m) for m in opts.mounted_files)
    if opts.s3_mount is not None:
        req.s3_mount.CopyFrom(gw.S3Mount(**dict(opts.s3_mount)))
    if opts.ports:
        req.ports.extend(gw.Port(**dict(p)) for p in opts.ports)

    fs = (
        opts.file_system_snapshot
        if opts.file_system_snapshot is not None
        else defaults.file_system_snapshot
    )
    if fs is not None:
        req.file_system.CopyFrom(snapshot_mount(FileSystemSnapshotOptions.coerce(fs)))

    secrets = [*(defaults.secrets or ()), *(Secret.coerce(s) for s in opts.secrets or ())]
    if secrets:
        req.secret_stores.extend(secret_stores(secrets))
    return req
