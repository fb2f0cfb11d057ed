"""Things attached to a sandbox when it starts: secrets and a file-system snapshot mount."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandboxd_protocol.v1beta2 import gateway_pb2 as gw
from sandboxd_protocol.v1beta2 import secrets_pb2

__all__ = ["FileSystemSnapshotOptions", "Secret", "secret_stores", "snapshot_mount"]


@dataclass(frozen=True, kw_only=True)
class Secret:
    """A secret from a server-side store, injected as an environment variable.

    ``env_var`` defaults to ``name``; ``field`` picks one field of a structured secret.
    """

    store: str
    name: str
    field: str = ""
    env_var: str | None = None

    def __post_init__(self) -> None:
        for attr in ("store", "name"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Secret.{attr} must be a non-empty string")
        if self.env_var is None:
            object.__setattr__(self, "env_var", self.name)

    @classmethod
    def coerce(cls, value: Secret | Mapping[str, Any]) -> Secret:
        """Accept a ``Secret`` or a dict with its keys."""
        if isinstance(value, Secret):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise TypeError(f"secrets must be Secret objects or dicts, not {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class FileSystemSnapshotOptions:
    """A writable file system mounted at ``mount_path``, optionally restored from a snapshot."""

    mount_path: str
    size: str | None = None
    file_system_snapshot_id: str | None = None

    @classmethod
    def coerce(
        cls, value: FileSystemSnapshotOptions | Mapping[str, Any]
    ) -> FileSystemSnapshotOptions:
        """Accept the options object or a dict with its keys."""
        if isinstance(value, FileSystemSnapshotOptions):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise TypeError(
            f"file_system_snapshot must be FileSystemSnapshotOptions or a dict, "
            f"not {type(value).__name__}"
        )


def secret_stores(secrets: Sequence[Secret]) -> list[secrets_pb2.SecretStoreReference]:
    """Group secrets by store, keeping first-seen store order."""
    stores: dict[str, secrets_pb2.SecretStoreReference] = {}
    for secret in secrets:
        ref = stores.setdefault(
            secret.store, secrets_pb2.SecretStoreReference(store_name=secret.store)
        )
        ref.secrets.append(
            secrets_pb2.SecretMapping(
                path=secret.name, field=secret.field, env_var=secret.env_var or ""
            )
        )
    return list(stores.values())


def snapshot_mount(options: FileSystemSnapshotOptions) -> gw.SandboxFileSystemMount:
    """The ``file_system`` field of the Start request."""
    msg = gw.SandboxFileSystemMount(mount_path=options.mount_path)
    if options.size is not None:
        msg.size = options.size
    if options.file_system_snapshot_id:
        msg.file_system_snapshot.file_system_snapshot_id = options.file_system_snapshot_id
    return msg
