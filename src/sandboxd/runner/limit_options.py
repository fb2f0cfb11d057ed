"""``sandboxd runner`` options for what the runner keeps back and what sandboxes may hold or reach.

Kept apart from ``cli.py`` so the command stays a list of its own options plus this one
decorator. Quantities are parsed once, here, with the same grammar as profiles
(``500m``, ``2``; ``512Mi``, ``2Gi``); the command folds the two reservations into a
:class:`~sandboxd.runner.capacity.HostReserve`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from sandboxd.runner.create_slots import default_concurrent_creates
from sandboxd.runner.exec_limits import DEFAULT_MAX_EXECS_PER_SANDBOX
from sandboxd_protocol.quantities import QuantityError, cpu_millicores, memory_bytes

F = TypeVar("F", bound=Callable[..., Any])


def _quantity(parse: Callable[[str], int]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def convert(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse(value)
        except QuantityError as exc:
            raise click.BadParameter(str(exc), param=param) from exc

    return convert


def limit_options(command: F) -> F:
    """Add the options of what the runner keeps back and what sandboxes may hold or reach.

    ``--reserve-cpu``/``-memory``, ``--max-execs-per-sandbox``, ``--max-concurrent-creates``
    and ``--block-egress``.
    """
    command = click.option(
        "--block-egress",
        "egress_blocked",
        metavar="CIDR",
        multiple=True,
        envvar="SANDBOXD_BLOCK_EGRESS",
        help="A CIDR no sandbox may reach, on top of the non-public ranges, this host and the "
        "control plane (e.g. a public IP the provider maps to this host); repeat for several.",
    )(command)
    command = click.option(
        "--max-concurrent-creates",
        type=click.IntRange(min=1),
        default=default_concurrent_creates,
        show_default="twice the CPUs the runner may use",
        envvar="SANDBOXD_MAX_CONCURRENT_CREATES",
        help="Cold creates the backend builds at once; more wait their turn in arrival order.",
    )(command)
    command = click.option(
        "--max-execs-per-sandbox",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_EXECS_PER_SANDBOX,
        show_default=True,
        envvar="SANDBOXD_MAX_EXECS_PER_SANDBOX",
        help="Concurrent execs one sandbox may run; one more is refused (EXEC_LIMIT_EXCEEDED).",
    )(command)
    command = click.option(
        "--reserve-memory",
        metavar="QUANTITY",
        callback=_quantity(memory_bytes),
        envvar="SANDBOXD_RESERVE_MEMORY",
        help="Memory kept for the host, e.g. 2Gi; sandboxes together get the rest "
        "[default: 10% of the host, 256Mi to 4Gi].",
    )(command)
    command = click.option(
        "--reserve-cpu",
        metavar="QUANTITY",
        callback=_quantity(cpu_millicores),
        envvar="SANDBOXD_RESERVE_CPU",
        help="CPU kept for the host, e.g. 500m; sandboxes together get the rest "
        "[default: 5% of the host, 100m to 1].",
    )(command)
    return command
