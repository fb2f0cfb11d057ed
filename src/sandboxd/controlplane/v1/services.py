"""Registering the v1 services on the control plane's one gRPC server.

Why one function: ``server.py`` adds the v1 protocol beside v1beta2 with one call, and the
generated v1 code stays imported only inside this package. Settings and volumes are
registered with handlers that answer UNIMPLEMENTED with ``CWSANDBOX_NOT_IMPLEMENTED``
(snapshot bucket settings and volumes come with the scratch-fs and snapshot work).
"""

from __future__ import annotations

import grpc

from sandboxd._proto_v1 import (
    discovery_pb2_grpc,
    sandbox_pb2_grpc,
    settings_pb2_grpc,
    volume_pb2_grpc,
)
from sandboxd.controlplane.files import Files
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.streaming import StreamingService
from sandboxd.controlplane.v1.discovery import V1DiscoveryService
from sandboxd.controlplane.v1.resources_db import V1Resources
from sandboxd.controlplane.v1.sandboxes import SNAPSHOTS, V1SandboxService
from sandboxd.controlplane.v1.streams import V1Streams
from sandboxd.controlplane.v1.unimplemented import unimplemented

VOLUMES = "registered volumes"
SETTINGS = "platform settings"


class V1SettingsService(settings_pb2_grpc.SettingsServiceServicer):
    """``SettingsService``: nothing offered yet (never called by clients but for buckets)."""

    GetFileSystemSnapshotBucketConfig = unimplemented("file_system_snapshots", SNAPSHOTS)
    UpdateFileSystemSnapshotBucketConfig = unimplemented("file_system_snapshots", SNAPSHOTS)
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
) -> None:
    """Serve ``coreweave.sandbox.v1`` on ``server`` over the shared plumbing."""
    streams = V1Streams(StreamingService(lifecycle, operations))
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1DiscoveryService(registry), server
    )
    sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SandboxService(lifecycle, files, resources, streams), server
    )
    settings_pb2_grpc.add_SettingsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1SettingsService(), server
    )
    volume_pb2_grpc.add_VolumeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        V1VolumeService(), server
    )
