"""Human-readable units for the numbers discovery returns.

Runners report memory in bytes and CPU in millicores because that is exact and what the
scheduler compares; people read GiB and vCPU. These helpers format the same way as the
official client, so output looks identical whichever client printed it.
"""

from __future__ import annotations

__all__ = ["format_bytes", "format_cpu"]

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_bytes(value: int) -> str:
    """Format a byte count with binary units: ``1536`` → ``'1.5 KiB'``, ``0`` → ``'0 B'``.

    Counts below 1 KiB (including negative ones) are shown as whole bytes; larger counts get
    one decimal in the largest unit up to TiB, so huge values stay in TiB rather than PiB.
    """
    if value < 1024:
        return f"{value} B"
    scaled = value / 1024
    index = 0
    while scaled >= 1024 and index < len(_BINARY_UNITS) - 1:
        scaled /= 1024
        index += 1
    return f"{scaled:.1f} {_BINARY_UNITS[index]}"


def format_cpu(millicores: int) -> str:
    """Format CPU millicores as vCPU with one decimal: ``500`` → ``'0.5 vCPU'``.

    Kubernetes and the scheduler count CPU in thousandths of a core; one vCPU is 1000.
    """
    return f"{millicores / 1000:.1f} vCPU"
