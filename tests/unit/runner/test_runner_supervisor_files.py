"""File operations through the supervisor: round trips, ``max_bytes`` and error reasons.

Against the in-memory stand-in backend (``backend_standin.py``), which only stands in for a
real backend (those pass their own conformance suite). What is pinned here is the mapping
to the public file reasons of v1beta2.md §6, with ``filepath`` (and sizes) in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start, stop


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing", "CWSANDBOX_FILE_NOT_FOUND"),
        ("/dir/x", "CWSANDBOX_FILE_IS_DIRECTORY"),
        ("/secret/x", "CWSANDBOX_FILE_PERMISSION_DENIED"),
        ("/broken/x", "CWSANDBOX_FILE_IO_FAILED"),
    ],
)
def test_file_errors_map_to_public_reasons(tmp_path: Path, path: str, reason: str) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        _, _, done = await rig.read_file(path)
        assert (done.failure.code, done.failure.reason) == (9, reason)
        assert done.failure.metadata["filepath"] == path

    run_rig(tmp_path, body)


def test_files_round_trip_and_max_bytes(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        done = await rig.write_file("/tmp/a", b"hello")
        assert (done.size, done.HasField("failure")) == (5, False)
        assert await rig.read_file("/tmp/a") == (5, b"hello", runner_pb2.FileDone(size=5))
        assert (await rig.write_file("/tmp/e", b"")).size == 0
        assert await rig.read_file("/tmp/e") == (0, b"", runner_pb2.FileDone(size=0))
        size, data, done = await rig.read_file("/tmp/a", max_bytes=3)
        assert (size, data) == (None, b"")
        assert (done.failure.code, done.failure.reason) == (9, "CWSANDBOX_FILE_TOO_LARGE")
        assert dict(done.failure.metadata) == {
            "filepath": "/tmp/a",
            "size_bytes": "5",
            "max_size_bytes": "3",
        }
        _, _, done = await rig.read_file("tmp/a")
        assert done.failure.reason == "CWSANDBOX_INVALID_ARGUMENT"
        assert done.failure.metadata["field"] == "path"

    run_rig(tmp_path, body)


def test_file_ops_on_an_ended_sandbox_are_not_running(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        await rig.run("2", **stop())
        _, _, done = await rig.read_file("/a")
        assert (done.failure.code, done.failure.reason) == (9, "CWSANDBOX_SANDBOX_NOT_RUNNING")
        done = await rig.write_file("/a", b"x")
        assert (done.failure.code, done.failure.reason) == (9, "CWSANDBOX_SANDBOX_NOT_RUNNING")

    run_rig(tmp_path, body)
