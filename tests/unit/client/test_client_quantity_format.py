"""Quantities shown back to people: the exact unit they would have written, or a rounded one."""

from __future__ import annotations

import pytest

from sandboxd_protocol.quantities import format_cpu, format_memory, memory_bytes


@pytest.mark.parametrize(
    "written", ["500Gi", "500G", "64Mi", "1", "1500M", "3Mi", "2Ti", "512Ki", "1k", "0"]
)
def test_a_round_quantity_comes_back_as_written(written: str) -> None:
    assert format_memory(memory_bytes(written)) == written


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [(123456789, "117.74Mi"), (12582912000, "11.72Gi"), (1536 << 20, "1536Mi"), (999, "999")],
)
def test_other_values_are_shown_exactly_when_short_else_rounded(nbytes: int, shown: str) -> None:
    assert format_memory(nbytes) == shown


@pytest.mark.parametrize(("millicores", "shown"), [(2000, "2"), (1500, "1500m"), (25, "25m")])
def test_cpu_in_cores_when_whole(millicores: int, shown: str) -> None:
    assert format_cpu(millicores) == shown
