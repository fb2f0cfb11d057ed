"""File commands through the supervisor: round trips, ``max_bytes`` and error reasons.

Against the in-memory stand-in backend (``backend_standin.py``), which only stands in for a
real backend (those pass their own conformance suite). What is pinned here is the mapping
to the public file reasons of v1beta2.md §6, with ``filepath`` (and sizes) in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd._proto import runner_pb2
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
        read = runner_pb2.ReadFile(sandbox_id="sb-1", path=path)
        result = await rig.run("2", read_file=read)
        assert (result.failure.code, result.failure.reason) == (9, reason)
        assert result.failure.metadata["filepath"] == path

    run_rig(tmp_path, body)


def test_files_round_trip_and_max_bytes(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        write = runner_pb2.WriteFile(sandbox_id="sb-1", path="/tmp/a", contents=b"hello")
        assert (await rig.run("2", write_file=write)).WhichOneof("result") == "done"
        read = runner_pb2.ReadFile(sandbox_id="sb-1", path="/tmp/a")
        assert (await rig.run("3", read_file=read)).file.contents == b"hello"
        empty = runner_pb2.WriteFile(sandbox_id="sb-1", path="/tmp/e")
        await rig.run("4", write_file=empty)
        result = await rig.run("5", read_file=runner_pb2.ReadFile(sandbox_id="sb-1", path="/tmp/e"))
        assert result.WhichOneof("result") == "file" and result.file.contents == b""
        capped = runner_pb2.ReadFile(sandbox_id="sb-1", path="/tmp/a", max_bytes=3)
        result = await rig.run("6", read_file=capped)
        assert (result.failure.code, result.failure.reason) == (9, "CWSANDBOX_FILE_TOO_LARGE")
        assert dict(result.failure.metadata) == {
            "filepath": "/tmp/a",
            "size_bytes": "5",
            "max_size_bytes": "3",
        }
        relative = runner_pb2.ReadFile(sandbox_id="sb-1", path="tmp/a")
        result = await rig.run("7", read_file=relative)
        assert result.failure.reason == "CWSANDBOX_INVALID_ARGUMENT"
        assert result.failure.metadata["field"] == "path"

    run_rig(tmp_path, body)


def test_file_ops_on_an_ended_sandbox_are_not_running(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        await rig.run("1", **start(spec()))
        await rig.run("2", **stop())
        result = await rig.run("3", read_file=runner_pb2.ReadFile(sandbox_id="sb-1", path="/a"))
        assert (result.failure.code, result.failure.reason) == (9, "CWSANDBOX_SANDBOX_NOT_RUNNING")

    run_rig(tmp_path, body)
