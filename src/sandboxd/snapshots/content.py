"""Where snapshot archives are stored: the control plane's data directory, or a local bucket.

Destinations, by bucket name:

* the managed one (no bucket configured): ``DATA_DIR/snapshots``;
* a *local bucket* ``NAME``: the directory ``DATA_DIR/buckets/NAME``, which an administrator
  makes (a mount of another disk, a network file system). A client names only the bucket,
  never a host path, so no API call can make the control plane write anywhere else.

Anything else (an ``s3://`` URL, a cloud region, a bucket whose directory does not exist) is
refused when it is configured (:func:`check_bucket`), never accepted and then lost.

Each archive is ``<destination>/<organization digest>/<snapshot id>.tar``, written to a
temporary name first and renamed once complete and hashed, so a half-written archive is
never taken for a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from sandboxd.errors import ApiError, invalid_argument
from sandboxd.snapshots.model import MANAGED_BUCKET, BucketConfig

BUCKET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
LOCAL_REGIONS = ("", "local")
CHUNK_BYTES = 1 << 20


class ArchiveTooLarge(Exception):
    """An archive grew past the cap it was written with."""


def check_bucket(data_dir: Path, bucket_name: str, region: str) -> BucketConfig:
    """The configuration to store for a Set request, or ApiError naming the bad field."""
    if not bucket_name:
        if region:
            raise invalid_argument("region", "a region needs a bucket_name")
        return BucketConfig()
    if not BUCKET_NAME_RE.fullmatch(bucket_name) or ".." in bucket_name:
        raise invalid_argument(
            "bucket_name",
            "must be a local bucket name (3-63 of a-z, 0-9, '.', '-'); this server stores "
            "snapshots in its data directory or in DATA_DIR/buckets/NAME, not in cloud buckets",
        )
    if region not in LOCAL_REGIONS:
        raise invalid_argument(
            "region", f"this server reaches no cloud region (got {region!r}); use '' or 'local'"
        )
    if not (data_dir / "buckets" / bucket_name).is_dir():
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"bucket {bucket_name!r} is not available: an administrator must create "
            f"DATA_DIR/buckets/{bucket_name} on the control plane first",
            reason="CWSANDBOX_FSS_BUCKET_UNAVAILABLE",
            metadata={"field": "bucket_name", "bucket_name": bucket_name},
        )
    return BucketConfig(bucket_name=bucket_name, region=region)


class ContentStore:
    """Archives on the control plane's disks, by bucket, organization and snapshot id."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def path(self, bucket: str, owner_org: str, snapshot_id: str) -> Path:
        """Where the archive of ``snapshot_id`` lives (ids are ours: ``fss-`` and hex)."""
        if bucket == MANAGED_BUCKET:
            root = self.data_dir / "snapshots"
        else:
            if not BUCKET_NAME_RE.fullmatch(bucket) or ".." in bucket:
                raise ValueError(f"bad bucket name {bucket!r}")
            root = self.data_dir / "buckets" / bucket
        org = hashlib.sha256(owner_org.encode()).hexdigest()[:24]
        if not re.fullmatch(r"fss-[0-9a-f]+", snapshot_id):
            raise ValueError(f"bad snapshot id {snapshot_id!r}")
        return root / org / f"{snapshot_id}.tar"

    async def write(
        self, target: Path, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[int, str]:
        """Store ``chunks`` at ``target``; (size, sha256 hex). Nothing is left on failure."""
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
        part = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        size = 0
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArchiveTooLarge(f"the archive is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(_write_all, fd, chunk)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            os.replace(part, target)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return size, digest.hexdigest()

    async def read(self, target: Path) -> AsyncIterator[bytes]:
        """The archive at ``target`` in chunks (constant memory)."""
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK_BYTES):
                yield chunk
        finally:
            os.close(fd)

    def delete(self, target: Path) -> None:
        """Remove an archive (no error when it is already gone)."""
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
