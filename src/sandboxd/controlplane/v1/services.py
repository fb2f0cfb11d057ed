"""Registering the v1 services on the control plane's one gRPC server.

Why one function: ``server.py`` adds the v1 protocol beside v1beta2 with one call, and the
generated v1 code stays imported only inside this package. Settings are served but for the
snapshot bucket configuration with handlers that answer UNIMPLEMENTED with
``CWSANDBOX_NOT_IMPLEMENTED``; snapshots go through :class:`V1Snapshots`, volumes through
:class:`V1Volumes`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from sandboxd.controlplane.files import Files
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.method_table import MethodTable
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.streaming import StreamingService
from sandboxd.controlplane.v1.discovery import V1DiscoveryService
from sandboxd.controlplane.v1.resources_db import V1Resources
from sandboxd.controlplane.v1.sandboxes import V1SandboxService
from sandboxd.controlplane.v1.snapshots import V1Snapshots
from sandboxd.controlplane.v1.streams import V1Streams
from sandboxd.controlplane.v1.unimplemented import Context, unimplemented
from sandboxd.controlplane.v1.volumes import V1Volumes
from sandboxd.errors import ApiError, abort_with
from sandboxd.snapshots.service import Snapshots
from sandboxd.volumes.service import Volumes
from sandboxd_protocol.v1 import (
    discovery_pb2_grpc,
    sandbox_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
    volume_pb2,
    volume_pb2_grpc,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
SETTINGS = "platform settings"


class V1SettingsService(settings_pb2_grpc.SettingsServiceServicer):
    """``SettingsService``: the snapshot bucket, the same one the v1beta2 RPCs configure.

    The rest is not offered (the client calls only the bucket RPCs).
    """

    def __init__(self, snapshots: V1Snapshots) -> None:
        self._snapshots = snapshots

    async def GetFileSystemSnapshotBucketConfig(
        self, request: settings_pb2.GetFileSystemSnapshotBucketConfigRequest, context: Context
    ) -> settings_pb2.FileSystemSnapshotBucketConfig:
        """Where the organization's snapshots go."""
        try:
            return await self._snapshots.get_bucket()
        except ApiError as error:
            await abort_with(context, error)

    async def UpdateFileSystemSnapshotBucketConfig(
        self, request: settings_pb2.UpdateFileSystemSnapshotBucketConfigRequest, context: Context
    ) -> settings_pb2.FileSystemSnapshotBucketConfig:
        """Set where the organization's snapshots go (an empty name: managed again)."""
        try:
            return await self._snapshots.update_bucket(request)
        except ApiError as error:
            await abort_with(context, error)

    GetBuildStorageConfig = unimplemented("build_storage", SETTINGS)
    UpdateBuildStorageConfig = unimplemented("build_storage", SETTINGS)
    GetObjectStorageWifConfig = unimplemented("object_storage", SETTINGS)
    UpdateObjectStorageWifConfig = unimplemented("object_storage", SETTINGS)
    DeleteObjectStorageWifConfig = unimplemented("object_storage", SETTINGS)
    CreateSecretStore = unimplemented("secret_stores", SETTINGS)
    GetSecretStore = unimplemented("secret_stores", SETTINGS)
    ListSecretStores = unimplemented("secret_stores", SETTINGS)
    UpdateSecretStore = unimplemented("secret_stores", SETTINGS)
    DeleteSecretStore = unimplemented("secret_stores", SETTINGS)


class V1VolumeService(volume_pb2_grpc.VolumeServiceServicer):
    """``VolumeService``: the organization's persistent volumes (:class:`V1Volumes`)."""

    def __init__(self, volumes: V1Volumes) -> None:
        self._volumes = volumes

    async def _run(self, context: Context, work: Awaitable[R]) -> R:
        try:
            return await work
        except ApiError as error:
            await abort_with(context, error)
        except Exception as exc:  # a bug of ours: log it, answer INTERNAL, keep serving
            log.exception("v1 volume call failed")
            await abort_with(
                context, ApiError(grpc.StatusCode.INTERNAL, f"internal error in sandboxd: {exc}")
            )

    async def CreateVolume(
        self, request: volume_pb2.CreateVolumeRequest, context: Context
    ) -> volume_pb2.Volume:
        """Register a volume; VALIDATING until its runner has the directory."""
        return await self._run(context, self._volumes.create(request))

    async def GetVolume(
        self, request: volume_pb2.GetVolumeRequest, context: Context
    ) -> volume_pb2.Volume:
        """One volume of the caller's organization."""
        return await self._run(context, self._volumes.get(request))

    async def ListVolumes(
        self, request: volume_pb2.ListVolumesRequest, context: Context
    ) -> volume_pb2.ListVolumesResponse:
        """The organization's volumes, paged, filtered by state and runner."""
        return await self._run(context, self._volumes.list(request))

    async def UpdateVolume(
        self, request: volume_pb2.UpdateVolumeRequest, context: Context
    ) -> volume_pb2.Volume:
        """Change the description."""
        return await self._run(context, self._volumes.update(request))

    async def DeleteVolume(
        self, request: volume_pb2.DeleteVolumeRequest, context: Context
    ) -> volume_pb2.Volume:
        """Forget the registration (its directory stays on the runner)."""
        return await self._run(context, self._volumes.delete(request))

    async def ValidateVolume(
        self, request: volume_pb2.ValidateVolumeRequest, context: Context
    ) -> volume_pb2.Volume:
        """Check the directory on its runner again."""
        return await self._run(context, self._volumes.validate(request))


def add_v1_services(
    server: MethodTable,
    *,
    registry: RunnerRegistry,
    lifecycle: Lifecycle,
    files: Files,
    operations: Operations,
    resources: V1Resources,
    snapshots: Snapshots,
    volumes: Volumes,
) -> None:
    """Add ``coreweave.sandbox.v1`` to the server's method table, over the shared plumbing."""
    streams = V1Streams(StreamingService(lifecycle, operations))
    fss = V1Snapshots(snapshots, lifecycle)
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1DiscoveryService(registry), server
    )
    sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SandboxService(lifecycle, files, resources, streams, fss, volumes=volumes), server
    )
    settings_pb2_grpc.add_SettingsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SettingsService(fss), server
    )
    volume_pb2_grpc.add_VolumeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1VolumeService(V1Volumes(volumes)), server
    )
