"""Reading and writing sandbox files with the unary RetrieveFile/AddFile RPCs (protocol §6).

A file that cannot be read or written is a ``SandboxFileError`` whichever way the server says
so: ``success=false`` in the response, or an error status carrying a ``CWSANDBOX_FILE_*``
reason (the error mapping turns those into ``SandboxFileError`` with ``.filepath``).
"""

from __future__ import annotations

from cwsandbox._lifecycle import Lifecycle
from cwsandbox._proto import gateway_pb2 as gw
from cwsandbox.exceptions import SandboxFileError

__all__ = ["check_contents", "check_path", "read_file", "write_file"]


def check_path(filepath: object) -> str:
    """A file path must be a non-blank string."""
    if not isinstance(filepath, str) or not filepath.strip():
        raise ValueError(f"filepath must be a non-empty string, got {filepath!r}")
    return filepath


def check_contents(contents: object) -> bytes:
    """File contents must be bytes-like (text must be encoded by the caller)."""
    if not isinstance(contents, bytes | bytearray | memoryview):
        raise TypeError(
            f"contents must be bytes, not {type(contents).__name__} (encode text first)"
        )
    return bytes(contents)


async def read_file(life: Lifecycle, path: str, timeout: float) -> bytes:
    """Wait for RUNNING, then RetrieveFile ``path``."""
    sid = await life.ensure_running()
    request = gw.RetrieveFileSandboxRequest(
        sandbox_id=sid, filepath=path, max_timeout_seconds=int(timeout)
    )
    resp = await life.transport.unary(
        "RetrieveFile",
        request,
        gw.RetrieveFileSandboxResponse,
        timeout=timeout,
        operation="read_file",
        sandbox_id=sid,
        filepath=path,
    )
    if not resp.success:
        raise SandboxFileError(f"Failed to read file '{path}': {resp.error_message}", filepath=path)
    return resp.file_contents


async def write_file(life: Lifecycle, path: str, data: bytes, timeout: float) -> None:
    """Wait for RUNNING, then AddFile ``data`` at ``path``."""
    sid = await life.ensure_running()
    request = gw.AddFileSandboxRequest(
        sandbox_id=sid, filepath=path, file_contents=data, max_timeout_seconds=int(timeout)
    )
    resp = await life.transport.unary(
        "AddFile",
        request,
        gw.AddFileSandboxResponse,
        timeout=timeout,
        operation="write_file",
        sandbox_id=sid,
        filepath=path,
    )
    if not resp.success:
        detail = f": {resp.error_message}" if resp.error_message else ""
        raise SandboxFileError(f"Failed to write file '{path}'{detail}", filepath=path)
