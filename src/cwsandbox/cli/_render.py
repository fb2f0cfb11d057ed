"""Turning discovery results into rich tables or JSON.

Tables use human units (``format_cpu`` / ``format_bytes``) because they are for people;
JSON keeps the raw integers because it is for programs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cwsandbox._format import format_bytes, format_cpu
from cwsandbox._types import Profile, Runner, RunnerResources

__all__ = [
    "console",
    "echo_json",
    "profile_detail",
    "profile_json",
    "profiles_table",
    "runner_detail",
    "runner_json",
    "runners_table",
]


def console() -> Console:
    """A stdout console; wide when piped so columns are not squeezed into 80 characters."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=max(out.width, 200), file=sys.stdout)
    return out


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _text(value: str) -> str:
    """Server-supplied text, escaped so ``[...]`` in a name is not read as rich markup."""
    return escape(value) if value else "-"


def _join(values: Iterable[str]) -> str:
    return _text(", ".join(values))


def _healthy(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def runner_json(runner: Runner) -> dict[str, Any]:
    """A JSON-ready dict of every field of ``runner`` (times in ISO 8601)."""
    res = runner.resources
    return {
        "runner_id": runner.runner_id,
        "runner_group_id": runner.runner_group_id,
        "tags": list(runner.tags),
        "healthy": runner.healthy,
        "profile_names": list(runner.profile_names),
        "connected_at": runner.connected_at.isoformat(),
        "max_cpu_millicores": runner.max_cpu_millicores,
        "max_memory_bytes": runner.max_memory_bytes,
        "max_gpu_count": runner.max_gpu_count,
        "supported_gpu_types": list(runner.supported_gpu_types),
        "supported_architectures": list(runner.supported_architectures),
        "supports_privileged": runner.supports_privileged,
        "available_storage_classes": list(runner.available_storage_classes),
        "resources": None
        if res is None
        else {
            "available_cpu_millicores": res.available_cpu_millicores,
            "available_memory_bytes": res.available_memory_bytes,
            "available_gpu_count": res.available_gpu_count,
            "running_sandboxes": res.running_sandboxes,
            "allocatable_cpu_millicores": res.allocatable_cpu_millicores,
            "allocatable_memory_bytes": res.allocatable_memory_bytes,
            "requested_cpu_millicores": res.requested_cpu_millicores,
            "requested_memory_bytes": res.requested_memory_bytes,
            "requested_gpu_count": res.requested_gpu_count,
            "cpu_overcommit_ratio": res.cpu_overcommit_ratio,
            "memory_overcommit_ratio": res.memory_overcommit_ratio,
        },
    }


def _ratio(value: float) -> str:
    return f"{value:g}x"


def overcommit_text(res: RunnerResources) -> str:
    """``cpu 16x, mem 1x``: how far requests may go beyond the allocatable capacity."""
    return f"cpu {_ratio(res.cpu_overcommit_ratio)}, mem {_ratio(res.memory_overcommit_ratio)}"


def profile_json(profile: Profile) -> dict[str, Any]:
    """A JSON-ready dict of ``profile``, with networking modes as lists of names."""
    return {
        "profile_name": profile.profile_name,
        "runner_id": profile.runner_id,
        "supported_gpu_types": list(profile.supported_gpu_types),
        "supported_architectures": list(profile.supported_architectures),
        "service_exposure_modes": [m.name for m in profile.service_exposure_modes],
        "egress_modes": [m.name for m in profile.egress_modes],
        "warm_pool": (
            {
                "size": profile.warm_pool.size,
                "ready": profile.warm_pool.ready,
                "claims": profile.warm_pool.claims,
                "error": profile.warm_pool.error,
            }
            if profile.warm_pool
            else None
        ),
    }


def runners_table(runners: Sequence[Runner], *, resources: bool) -> Table:
    """One row per runner: identity, health, maximum size, and free capacity if asked."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("RUNNER", "GROUP", "HEALTHY", "CPU", "MEMORY", "GPUS", "GPU TYPES", "ARCH"):
        table.add_column(name, justify="right" if name in ("CPU", "MEMORY", "GPUS") else "left")
    if resources:
        for name in ("FREE CPU", "FREE MEMORY", "FREE GPUS", "SANDBOXES", "REQ CPU", "REQ MEMORY"):
            table.add_column(name, justify="right")
        table.add_column("OVERCOMMIT")
    table.add_column("PROFILES")
    for r in runners:
        row = [
            _text(r.runner_id),
            _text(r.runner_group_id),
            _healthy(r.healthy),
            format_cpu(r.max_cpu_millicores),
            format_bytes(r.max_memory_bytes),
            str(r.max_gpu_count),
            _join(r.supported_gpu_types),
            _join(r.supported_architectures),
        ]
        if resources:
            res = r.resources
            row += (
                ["-"] * 7
                if res is None
                else [
                    format_cpu(res.available_cpu_millicores),
                    format_bytes(res.available_memory_bytes),
                    str(res.available_gpu_count),
                    str(res.running_sandboxes),
                    format_cpu(res.requested_cpu_millicores),
                    format_bytes(res.requested_memory_bytes),
                    overcommit_text(res),
                ]
            )
        row.append(_join(r.profile_names))
        table.add_row(*row)
    return table


def profiles_table(profiles: Sequence[Profile]) -> Table:
    """One row per (runner, profile) pair with its hardware and networking modes."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("PROFILE", "RUNNER", "GPU TYPES", "ARCH", "INGRESS", "EGRESS"):
        table.add_column(name)
    for p in profiles:
        table.add_row(
            _text(p.profile_name),
            _text(p.runner_id),
            _join(p.supported_gpu_types),
            _join(p.supported_architectures),
            _join(m.name for m in p.ingress_modes),
            _join(m.name for m in p.egress_modes),
        )
    return table


def _detail(rows: Sequence[tuple[str, str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def runner_detail(r: Runner) -> Table:
    """Every field of one runner as a two-column key/value listing."""
    rows = [
        ("Runner", _text(r.runner_id)),
        ("Group", _text(r.runner_group_id)),
        ("Healthy", _healthy(r.healthy)),
        ("Connected", r.connected_at.isoformat()),
        ("Tags", _join(r.tags)),
        ("CPU", format_cpu(r.max_cpu_millicores)),
        ("Memory", format_bytes(r.max_memory_bytes)),
        ("GPUs", str(r.max_gpu_count)),
        ("GPU types", _join(r.supported_gpu_types)),
        ("Architectures", _join(r.supported_architectures)),
        ("Privileged", "yes" if r.supports_privileged else "no"),
        ("Storage classes", _join(r.available_storage_classes)),
        ("Profiles", _join(r.profile_names)),
    ]
    res = r.resources
    if res is not None:
        rows += [
            ("Free CPU", format_cpu(res.available_cpu_millicores)),
            ("Free memory", format_bytes(res.available_memory_bytes)),
            ("Free GPUs", str(res.available_gpu_count)),
            ("Sandboxes", str(res.running_sandboxes)),
            ("Requested CPU", format_cpu(res.requested_cpu_millicores)),
            ("Requested memory", format_bytes(res.requested_memory_bytes)),
            ("Overcommit", overcommit_text(res)),
        ]
    return _detail(rows)


def _warm_pool(p: Profile) -> str:
    pool = p.warm_pool
    if pool is None:
        return "none"
    text = f"{pool.ready}/{pool.size} ready, {pool.claims} claimed"
    return f"{text} (last build failed: {pool.error})" if pool.error else text


def profile_detail(p: Profile) -> Table:
    """Every field of one profile as a two-column key/value listing."""
    return _detail(
        [
            ("Profile", _text(p.profile_name)),
            ("Runner", _text(p.runner_id)),
            ("GPU types", _join(p.supported_gpu_types)),
            ("Architectures", _join(p.supported_architectures)),
            ("Ingress", _join(m.name for m in p.ingress_modes)),
            ("Egress", _join(m.name for m in p.egress_modes)),
            (
                "Warm pool",
                _text(_warm_pool(p)),
            ),
        ]
    )
