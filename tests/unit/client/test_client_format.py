"""format_bytes / format_cpu, with edge cases checked against the official 0.26.2 client."""

from __future__ import annotations

import pytest

from cwsandbox import format_bytes, format_cpu


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4 * 1024**3, "4.0 GiB"),
        (1536, "1.5 KiB"),
        (0, "0 B"),
        (123456789, "117.7 MiB"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1025, "1.0 KiB"),
        (1024**2 - 1, "1024.0 KiB"),  # rounds up but stays in the smaller unit, like official
        (1024**2, "1.0 MiB"),
        (1024**4, "1.0 TiB"),
        (5 * 1024**4, "5.0 TiB"),
        (1024**5, "1024.0 TiB"),  # TiB is the largest unit
        (2**63 - 1, "8388608.0 TiB"),
        (-1, "-1 B"),
        (-1536, "-1536 B"),  # negatives are never scaled
        (-(1024**3), "-1073741824 B"),
    ],
)
def test_format_bytes(value: int, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize(
    ("millicores", "expected"),
    [
        (2000, "2.0 vCPU"),
        (500, "0.5 vCPU"),
        (0, "0.0 vCPU"),
        (1, "0.0 vCPU"),
        (-1, "-0.0 vCPU"),
        (-500, "-0.5 vCPU"),
        (1250, "1.2 vCPU"),
        (1251, "1.3 vCPU"),
        (16000, "16.0 vCPU"),
        (999999, "1000.0 vCPU"),
    ],
)
def test_format_cpu(millicores: int, expected: str) -> None:
    assert format_cpu(millicores) == expected
