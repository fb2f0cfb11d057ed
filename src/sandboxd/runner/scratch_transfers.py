"""The runner's half of scratch file systems: the spec, snapshot archives up, restores down.

Why the restore is staged on the runner's disk first: the control plane sends a snapshot's
archive to whichever runner got the sandbox (on an ``OpenScratchRestore`` operation) while
the runner creates it, and the sandbox must not start before its scratch file system is
filled. So the archive is written to a file here as it arrives (constant memory), checked
against the size and SHA-256 the control plane recorded when it stored the snapshot, and
only then offered to the create, which waits for it a bounded time
(:data:`RESTORE_WAIT_SECONDS`) and hands the backend the staged file. The file is removed
once the create is over, whichever way it went.

Snapshot archives go the other way as file reads do: ``opened``, data frames, ``done``.
The runner holds one chunk at a time; ``max_bytes`` (the control plane's cap) is enforced
as the bytes go, so an archive that grows too large is cut with ``CWSANDBOX_FSS_SIZE_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from sandboxd.backends.base import SANDBOX_ID_RE, Backend, ScratchSpec
from sandboxd.backends.errors import BackendError, InvalidSpec
from sandboxd.runner import failures
from sandboxd.runner.exec_relay import CALL_ERRORS, OperateCall, end_call
from sandboxd.runner.failures import CommandFailed, failure, from_backend_error
from sandboxd_protocol.sandboxd_v1 import runner_pb2

__all__ = ["RESTORE_WAIT_SECONDS", "ScratchTransfers"]

_log = logging.getLogger(__name__)
RESTORE_WAIT_SECONDS = 120.0
"""How long a create waits for its snapshot's archive to arrive and be checked."""
STAGED_KEEP_SECONDS = 600.0
"""A staged archive no create took (its Start never came) is removed after this long."""


def restore_failed(sandbox_id: str, why: str) -> CommandFailed:
    """A restore that cannot happen (``CWSANDBOX_FSS_RESTORE_FAILED``)."""
    return CommandFailed(
        failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CWSANDBOX_FSS_RESTORE_FAILED",
            f"restoring the scratch file system of sandbox {sandbox_id!r} failed: {why}",
            sandbox_id=sandbox_id,
        )
    )


class ScratchTransfers:
    """Staged restore archives (one per sandbox being created) and snapshot archives."""

    def __init__(self, backend: Backend, staging_dir: Path | None) -> None:
        self._backend = backend
        self._dir = staging_dir or Path(tempfile.mkdtemp(prefix="sandboxd-restores-"))
        self._arrived: dict[str, asyncio.Event] = {}

    def _path(self, sandbox_id: str, suffix: str) -> Path:
        if not SANDBOX_ID_RE.match(sandbox_id):
            raise failures.invalid_argument("sandbox_id", "not a sandbox id")
        return self._dir / f"{sandbox_id}{suffix}"

    async def scratch_spec(self, spec: runner_pb2.SandboxSpec) -> ScratchSpec | None:
        """The backend's scratch spec, re-checked against the profile; waits for a restore."""
        if not spec.HasField("scratch"):
            return None
        volume = spec.scratch
        ceiling = spec.limits.max_disk_bytes
        if ceiling and volume.size_bytes > ceiling:
            raise failures.invalid_argument(
                "file_system.size",
                f"{volume.size_bytes} bytes is more than the profile's disk ceiling ({ceiling})",
            )
        staged = None
        if volume.restore_snapshot_id:
            staged = await self._wait_staged(spec.sandbox_id)
        try:
            return ScratchSpec(
                mount_path=volume.mount_path,
                size_bytes=volume.size_bytes,
                name=volume.name or "workspace",
                restore_archive=staged,
            )
        except InvalidSpec as exc:
            raise failures.invalid_argument(
                exc.field, str(exc).removeprefix(f"{exc.field}: ")
            ) from None

    async def _wait_staged(self, sandbox_id: str) -> Path:
        path = self._path(sandbox_id, ".tar")
        event = self._arrived.setdefault(sandbox_id, asyncio.Event())
        if not path.exists():
            try:
                await asyncio.wait_for(event.wait(), RESTORE_WAIT_SECONDS)
            except TimeoutError:
                raise restore_failed(
                    sandbox_id, f"its archive did not arrive within {RESTORE_WAIT_SECONDS:g}s"
                ) from None
        return path

    def discard(self, sandbox_id: str) -> None:
        """Forget a create's staged archive (the create is over)."""
        self._arrived.pop(sandbox_id, None)
        self.discard_files(sandbox_id)

    def discard_files(self, sandbox_id: str) -> None:
        """Remove a staged (or half-staged) archive; a create waiting for one keeps waiting."""
        for suffix in (".tar", ".part"):
            with contextlib.suppress(OSError, CommandFailed):
                self._path(sandbox_id, suffix).unlink()

    async def stage(
        self, command: runner_pb2.OpenScratchRestore, frames: AsyncIterator[bytes | memoryview]
    ) -> runner_pb2.FileDone:
        """Write the archive's frames to the staging file, check them, offer them to the create."""
        sid = command.sandbox_id
        try:
            part = self._path(sid, ".part")
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = hashlib.sha256()
            size = 0
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                async for chunk in frames:
                    size += len(chunk)
                    if size > command.size_bytes:
                        raise restore_failed(sid, "the archive is larger than its snapshot")
                    digest.update(chunk)
                    await asyncio.to_thread(_write_all, fd, chunk)
            finally:
                os.close(fd)
            if size != command.size_bytes or digest.hexdigest() != command.sha256:
                raise restore_failed(sid, "the archive does not match its snapshot's digest")
            part.replace(self._path(sid, ".tar"))
        except CommandFailed as exc:
            self.discard_files(sid)
            return runner_pb2.FileDone(failure=exc.failure)
        self._arrived.setdefault(sid, asyncio.Event()).set()
        asyncio.get_running_loop().call_later(STAGED_KEEP_SECONDS, self.discard_files, sid)
        return runner_pb2.FileDone(size=size)

    async def send_archive(self, command: runner_pb2.OpenScratchArchive, call: OperateCall) -> None:
        """``opened``, the archive as ``data`` frames, then ``done`` (or its failure)."""
        sid = command.sandbox_id
        sent = 0
        try:
            reader = await self._backend.open_scratch_archive(sid)
            async with contextlib.aclosing(reader):
                await call.write(runner_pb2.OperationUp(opened=runner_pb2.FileOpened(size=-1)))
                async for chunk in reader:
                    sent += len(chunk)
                    if command.max_bytes and sent > command.max_bytes:
                        raise CommandFailed(
                            failure(
                                grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "CWSANDBOX_FSS_SIZE_EXCEEDED",
                                f"the snapshot would be larger than {command.max_bytes} bytes",
                                max_size_bytes=command.max_bytes,
                            )
                        )
                    await call.write(runner_pb2.OperationUp(data=chunk))
            done = runner_pb2.FileDone(size=sent)
        except CommandFailed as exc:
            done = runner_pb2.FileDone(size=sent, failure=exc.failure)
        except BackendError as exc:
            done = runner_pb2.FileDone(size=sent, failure=from_backend_error(exc, sid))
        except CALL_ERRORS as exc:
            _log.info("snapshot of %s: the stream ended early (%s)", sid, exc)
            return
        with contextlib.suppress(*CALL_ERRORS):
            await call.write(runner_pb2.OperationUp(done=done))
        await end_call(call)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
