"""Suite-wide rules: in CI nothing may be skipped.

A skip is for a machine that lacks something (not root, a missing package). CI runs as root
with everything installed by ``scripts/setup.sh``, so there a skip means a test silently did
not run: with ``SANDBOXD_REQUIRE_NO_SKIPS=1`` (set by ``.ci/run``) the session fails and
lists them.
"""

from __future__ import annotations

import os

import pytest

# Fixtures any test may ask for: a PostgreSQL server and databases on SQLite and PostgreSQL
# (tests/support/postgres.py), and test networks whose hosts run runners (tests/support/hosts.py).
from tests.support.hosts import test_network
from tests.support.postgres import database_url, postgres_server, store_fault

__all__ = ["database_url", "postgres_server", "store_fault", "test_network"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SANDBOXD_REQUIRE_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not skipped:
        return
    for report in skipped:
        reporter.write_line(f"SKIPPED IN CI (not allowed): {report.nodeid}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
