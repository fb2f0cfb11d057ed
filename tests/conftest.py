"""Suite-wide rules: in CI nothing may be skipped, and nothing may be left on the host.

A skip is for a machine that lacks something (not root, a missing package). CI runs as root
with everything installed by ``scripts/setup.sh``, so there a skip means a test silently did
not run: with ``SANDBOXD_REQUIRE_NO_SKIPS=1`` (set by ``.ci/run``) the session fails and
lists them. With ``SANDBOXD_REQUIRE_NO_LEFTOVERS=1`` (also set by ``.ci/run``) it fails when
sandbox namespaces, links, firewall rules, claims nothing could give back (an empty one, or
one whose owner has no lock file) or sandboxd processes that appeared during it are still
there at its end, after a grace of 15 s (``tests/support/leftovers.py``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest

# Fixtures any test may ask for: a PostgreSQL server and databases on SQLite and PostgreSQL
# (tests/support/postgres.py), and test networks whose hosts run runners (tests/support/hosts.py).
from tests.support.hosts import test_network
from tests.support.leftovers import (
    WARNINGS_ENV,
    host_network_leftovers,
    left_behind,
    record_warnings,
    sandboxd_processes,
    warnings_about,
)
from tests.support.postgres import database_url, postgres_server, store_fault

__all__ = ["database_url", "postgres_server", "store_fault", "test_network"]

_BEFORE: set[str] = set()


def _checks_leftovers(session: pytest.Session) -> bool:
    """Only the controlling process checks (xdist workers end before the others do)."""
    worker = hasattr(session.config, "workerinput")
    return os.environ.get("SANDBOXD_REQUIRE_NO_LEFTOVERS") == "1" and not worker


def pytest_configure(config: pytest.Config) -> None:
    """Every test process records sandboxd's warnings for the leftover report."""
    if os.environ.get("SANDBOXD_REQUIRE_NO_LEFTOVERS") != "1":
        return
    if not hasattr(config, "workerinput"):  # the controller names the file; workers inherit
        handle, path = tempfile.mkstemp(prefix="sandboxd-test-warnings-", suffix=".log")
        os.close(handle)
        os.environ[WARNINGS_ENV] = path
    record_warnings()


def pytest_sessionstart(session: pytest.Session) -> None:
    if _checks_leftovers(session):
        _BEFORE.update(host_network_leftovers() | sandboxd_processes())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _checks_leftovers(session):
        left = left_behind(_BEFORE)
        for thing in left:
            if reporter is not None:
                reporter.write_line(f"LEFT ON THE HOST (not allowed): {thing}", red=True)
        if left:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            for line in warnings_about(left):
                if reporter is not None:
                    reporter.write_line(f"warning about it: {line}", red=True)
        with contextlib.suppress(OSError):
            os.unlink(os.environ.get(WARNINGS_ENV, ""))
    if os.environ.get("SANDBOXD_REQUIRE_NO_SKIPS") != "1":
        return
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not skipped:
        return
    for report in skipped:
        reporter.write_line(f"SKIPPED IN CI (not allowed): {report.nodeid}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
