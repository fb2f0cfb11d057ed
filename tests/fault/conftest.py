"""Fault tests: real control planes, runners and sandboxes, broken on purpose.

Every test here runs separate ``sandboxd controlplane`` and ``sandboxd runner`` processes
(the runner in a network namespace of its own behind a test router, so that its link can be
cut) and is parametrised over the control plane's database: SQLite and PostgreSQL
(``database_url``), or over real store failures (``store_fault``). Faults are real: SIGKILL,
packets dropped in the router, a full filesystem, a stopped database server. Tests wait on
what they expect with deadlines, never after fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.faults import Cluster, start_cluster
from tests.support.hosts import HostNetwork
from tests.support.postgres import PostgresServer, StoreFault


@pytest.fixture
def cluster(test_network: HostNetwork, database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """A control plane on ``database_url`` and a healthy runner ``east`` on its own host."""
    with start_cluster(test_network, tmp_path, database_url) as running:
        yield running


@pytest.fixture
def fresh_database_url(
    database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """Another empty database of the same kind as ``database_url`` (a new file, or a new
    PostgreSQL database on the same server)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.database() as url:
        yield url


@pytest.fixture
def faulty_cluster(
    test_network: HostNetwork, store_fault: StoreFault, tmp_path: Path
) -> Iterator[tuple[Cluster, StoreFault]]:
    """A cluster whose control plane's database can be made to fail (``store_fault``)."""
    with start_cluster(test_network, tmp_path, store_fault.url) as running:
        yield running, store_fault
