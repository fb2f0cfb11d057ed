"""Exec scripts for the stand-in that act out what the client runs in a real sandbox.

For client-side unit tests only. The file helpers run small shell scripts and remote
functions run ``python -c <runner>``; these scripts play those commands against the
stand-in's in-memory files, so the client's side of each conversation can be tested
without a sandbox. The remote-function runner is executed for real, by this Python, on
temporary copies of the payload and result files. End-to-end tests run the real thing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cwsandbox._file_stream import READ_SCRIPT, WRITE_SCRIPT
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.unit.client.sandbox.gateway_standin import (
    READY,
    StandInGateway,
    canned_exec,
    exit_frame,
    out,
)

FRAME = 64 * 1024


@dataclass
class FileSystem:
    """Knobs for the emulated file commands."""

    directories: set[str] = field(default_factory=lambda: {"/", "/tmp", "/etc"})
    unreadable: set[str] = field(default_factory=set)
    #: Send this many bytes fewer than ``stat`` reported (a silently short read).
    short_read: int = 0
    #: Report this many bytes fewer written than received (a short write).
    short_write: int = 0
    #: Every streamed exec's argv, in order.
    argvs: list[list[str]] = field(default_factory=list)


def _stdin(requests: Iterator[Any]) -> bytes:
    data = bytearray()
    for req in requests:
        if req.HasField("stdin"):
            data += req.stdin.data
        elif req.HasField("close"):
            break
    return bytes(data)


def _read(files: dict[str, bytes], fs: FileSystem, path: str) -> Iterator[Any]:
    yield READY
    if path in fs.directories:
        yield out(f"cat: {path}: Is a directory\n", stderr=True)
        yield exit_frame(1)
        return
    if path in fs.unreadable:
        yield out(f"cat: {path}: Permission denied\n", stderr=True)
        yield exit_frame(1)
        return
    if path not in files:
        yield out(f"cat: {path}: No such file or directory\n", stderr=True)
        yield exit_frame(1)
        return
    data = files[path]
    yield out(f"cwsandbox-size:{len(data)}\n", stderr=True)
    data = data[: len(data) - fs.short_read] if fs.short_read else data
    for start in range(0, len(data), FRAME):
        yield out(data[start : start + FRAME])
    yield exit_frame(0)


def _write(
    files: dict[str, bytes], fs: FileSystem, path: str, requests: Iterator[Any]
) -> Iterator[Any]:
    yield READY
    data = _stdin(requests)
    if path in fs.directories:
        yield out(f"cwsandbox-write-file: 3: cannot create {path}: Is a directory\n", True)
        yield exit_frame(2)
        return
    if path in fs.unreadable:
        yield out(f"cwsandbox-write-file: 3: cannot create {path}: Permission denied\n", True)
        yield exit_frame(2)
        return
    files[path] = data
    yield out(f"{len(data) - fs.short_write}\n")
    yield exit_frame(0)


def _python(files: dict[str, bytes], argv: list[str]) -> Iterator[Any]:
    yield READY
    runner, payload_path, result_path = argv[2], argv[3], argv[4]
    with tempfile.TemporaryDirectory() as tmp:
        payload, result = Path(tmp, "payload.json"), Path(tmp, "result.json")
        payload.write_bytes(files[payload_path])
        proc = subprocess.run(
            [sys.executable, "-c", runner, str(payload), str(result)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.exists():
            files[result_path] = result.read_bytes()
    if proc.stdout:
        yield out(proc.stdout)
    if proc.stderr:
        yield out(proc.stderr, stderr=True)
    yield exit_frame(proc.returncode)


def emulate(servicer: StandInGateway, fs: FileSystem | None = None) -> FileSystem:
    """Install the emulation on ``servicer``; returns its knobs."""
    fs = fs or FileSystem()

    def script(init: st.ExecStreamInit, requests: Iterator[Any]) -> Iterator[Any]:
        argv = list(init.command)
        fs.argvs.append(argv)
        files = servicer.boxes[init.sandbox_id].files
        if argv[:3] == ["/bin/sh", "-c", READ_SCRIPT]:
            yield from _read(files, fs, argv[4])
        elif argv[:3] == ["/bin/sh", "-c", WRITE_SCRIPT]:
            yield from _write(files, fs, argv[4], requests)
        elif argv[:2] == ["python", "-c"]:
            yield from _python(files, argv)
        else:
            yield from canned_exec(init, requests)

    servicer.exec_script = script
    return fs
