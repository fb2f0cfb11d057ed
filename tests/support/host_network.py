"""What a test sees of the host's network: its links and its firewall rules.

Why one place: several backend tests watch a sandbox network's host end (``sbx<tag>``) and
its rules appear and vanish, and each kept its own copy of these few lines. Scripts that a
test runs in a network namespace of its own (:func:`in_own_network_namespace`, which puts
the repository root on their path) import them too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def link_exists(name: str) -> bool:
    """Whether a link of that name exists in this namespace (the host end of a veth).

    ``ip link show dev`` rather than a search of ``ip -o link``: that prints a veth as
    ``sbx<tag>@ifN:``, which a search for ``sbx<tag>:`` never finds.
    """
    shown = subprocess.run(["ip", "link", "show", "dev", name], capture_output=True)
    return shown.returncode == 0


def link_names() -> set[str]:
    """Names of this namespace's links, without the ``@peer`` suffix of a veth."""
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in shown.splitlines() if line}


def iptables_rules() -> str:
    """The host's firewall rules as ``iptables-save`` prints them (every table)."""
    return subprocess.run(["iptables-save"], check=True, capture_output=True, text=True).stdout


def table_rules(table: str = "filter") -> list[str]:
    """The lines ``iptables-save`` prints for one table."""
    saved = ["iptables-save", "-t", table]
    return subprocess.run(saved, check=True, capture_output=True, text=True).stdout.splitlines()


def chain_rules(name: str, table: str = "filter") -> list[str]:
    """The ``-A`` lines of chain ``name``; empty when the chain does not exist."""
    shown = subprocess.run(["iptables", "-t", table, "-S", name], capture_output=True, text=True)
    return [line for line in shown.stdout.splitlines() if line.startswith("-A ")]


def jumps_to(chain: str, table: str = "filter") -> list[str]:
    """The rules of ``table`` that jump to ``chain``."""
    return [line for line in table_rules(table) if line.endswith(f"-j {chain}")]


def in_own_network_namespace(script: str, *argv: str, timeout: float = 120) -> str:
    """Run Python ``script`` (with ``argv``) in a new network namespace; its output.

    Its own namespace, so it may flush firewall chains or make links without touching the
    host's or other test workers'. The repository root goes first on its path (it imports
    ``tests.support``); it must exit 0, or the test fails with its output.
    """
    ran = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    return ran.stdout
