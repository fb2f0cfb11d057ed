"""What a finished command leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProcessResult"]


@dataclass(frozen=True)
class ProcessResult:
    """The outcome of one ``Sandbox.exec``: output, exit code and the command that ran.

    ``stdout``/``stderr`` are the raw bytes decoded as UTF-8 (invalid bytes become U+FFFD);
    ``stdout_bytes``/``stderr_bytes`` are exactly what the process wrote. ``command`` is the
    argv as the caller gave it (before any ``cwd`` rewriting).
    """

    stdout: str
    stderr: str
    returncode: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    command: list[str] = field(default_factory=list)

    @classmethod
    def from_bytes(
        cls, out: bytes, err: bytes, returncode: int, command: list[str]
    ) -> ProcessResult:
        """Build a result from raw output, decoding it once for the text fields."""
        return cls(
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            returncode=returncode,
            stdout_bytes=out,
            stderr_bytes=err,
            command=list(command),
        )
