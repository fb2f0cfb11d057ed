"""Registering the v1 services on the control plane's one gRPC server.

Why one function: ``server.py`` adds the v1 protocol beside v1beta2 with one call, and the
generated v1 code stays imported only inside this package. Settings and volumes are
served but for the snapshot bucket configuration with handlers that answer UNIMPLEMENTED
with ``CWSANDBOX_NOT_IMPLEMENTED``; snapshots go through :class:`V1Snapshots`.
"""

from __future__ import annotations

import grpc

from sandboxd.controlplane.files import Files
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.streaming import StreamingService
from sandboxd.controlplane.v1.discovery import V1DiscoveryService
from sandboxd.controlplane.v1.resources_db import V1Resources
from sandboxd.controlplane.v1.sandboxes import V1SandboxService
from sandboxd.controlplane.v1.snapshots import V1Snapshots
from sandboxd.controlplane.v1.streams import V1Streams
from sandboxd.controlplane.v1.unimplemented import Context, unimplemented
from sandboxd.errors import ApiError, abort_with
from sandboxd.snapshots.service import Snapshots
from sandboxd_protocol.v1 import (
    discovery_pb2_grpc,
    sandbox_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
    volume_pb2_grpc,
)

VOLUMES = "registered volumes"
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
    """``VolumeService``: registered volumes are not offered yet."""

    CreateVolume = unimplemented("volumes", VOLUMES)
    GetVolume = unimplemented("volumes", VOLUMES)
    ListVolumes = unimplemented("volumes", VOLUMES)
    UpdateVolume = unimplemented("volumes", VOLUMES)
    DeleteVolume = unimplemented("volumes", VOLUMES)
    ValidateVolume = unimplemented("volumes", VOLUMES)


def add_v1_services(
    server: grpc.aio.Server,
    *,
    registry: RunnerRegistry,
    lifecycle: Lifecycle,
    files: Files,
    operations: Operations,
    resources: V1Resources,
    snapshots: Snapshots,
) -> None:
    """Serve ``coreweave.sandbox.v1`` on ``server`` over the shared plumbing."""
    streams = V1Streams(StreamingService(lifecycle, operations))
    fss = V1Snapshots(snapshots, lifecycle)
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1DiscoveryService(registry), server
    )
    sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SandboxService(lifecycle, files, resources, streams, fss), server
    )
    settings_pb2_grpc.add_SettingsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SettingsService(fss), server
    )
    volume_pb2_grpc.add_VolumeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1VolumeService(), server
    )
