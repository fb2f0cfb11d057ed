"""Outbound connection attempts in a sandbox's activity trail, through a real ``sandboxd up``.

The neighbours are one network namespace this module creates (``tests/backends/nethost.py``);
no packet goes anywhere else. Each attempt must appear once in the trail, written by the
runner from the host firewall's log (never by the sandbox), with the decision the firewall
took and the installed rule that took it; a flood is bounded and folded, never unbounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cwsandbox import NetworkOptions, Sandbox, SandboxDefaults
from cwsandbox._events import iter_events
from tests.backends.nethost import NetHost, test_host
from tests.support.egress_profiles import egress_config
from tests.support.processes import Up, all_in_one

__all__ = ["test_host"]

PROBE = """
import socket, sys
port = int(sys.argv[1])
for ip in sys.argv[2:]:
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            print(ip, "reached")
    except OSError as e:
        print(ip, "blocked", repr(e).replace(" ", "_"))
"""

FLOOD = """
import socket, sys
ip, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect((ip, 8080))
    except OSError:
        pass
    s.close()
print("sent", n)
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, test_host: NetHost) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("trail-up")
    config = data / "platform.yaml"
    config.write_text(egress_config("trail-test", [test_host.private_a]))
    with all_in_one(Path(data), "--config", str(config)) as platform:
        yield platform


@pytest.fixture
def defaults(up: Up, monkeypatch: pytest.MonkeyPatch) -> SandboxDefaults:
    monkeypatch.setenv("CWSANDBOX_API_KEY", up.api_key)
    return SandboxDefaults(base_url=up.base_url, tags=("connection-trail",))


def connections(up: Up, sandbox_id: str, want: int, deadline_s: float = 20.0) -> list[Any]:
    """The sandbox's connection events, once at least ``want`` distinct ones are there."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = [e for e in iter_events(sandbox_id, base_url=up.base_url) if e.kind == "connection"]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def by_destination(events: list[Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(e.data["destination"], e.data["port"]): e.data for e in events}


def test_each_attempt_is_in_the_trail_with_its_decision_and_rule(
    up: Up, test_host: NetHost, defaults: SandboxDefaults
) -> None:
    lan = NetworkOptions(egress_mode="lan")
    targets = (test_host.private_a, test_host.ip_a, test_host.private_b, test_host.host_ip)
    with Sandbox.run(defaults=defaults, network=lan) as sandbox:
        result = sandbox.exec(["python3", "-c", PROBE, "8080", *targets]).result()
        assert result.returncode == 0, result.stderr
        seen = dict(line.split()[:2] for line in result.stdout.splitlines())
        assert seen == {
            test_host.private_a: "reached",
            test_host.ip_a: "blocked",
            test_host.private_b: "blocked",
            test_host.host_ip: "blocked",
        }, result.stdout  # each "blocked" line names its error
        events = connections(up, sandbox.sandbox_id, want=4)
    trail = by_destination(events)
    allowed = trail[(test_host.private_a, 8080)]
    assert allowed["decision"] == "allowed" and allowed["protocol"] == "tcp"
    assert f"-d {test_host.private_a}/32 -j ACCEPT" in allowed["rule"]
    # Public, but not on the allowlist: the allowlist's closing reject decides.
    public = trail[(test_host.ip_a, 8080)]
    assert public["decision"] == "rejected"
    assert public["rule"].startswith("SBX-") and public["rule"].split()[1:3] == ["-j", "REJECT"]
    # Private and not named: the shared chain of non-public ranges rejects it.
    private = trail[(test_host.private_b, 8080)]
    assert private["decision"] == "rejected"
    assert private["rule"].startswith("SANDBOXD-NONPUBLIC -d 10.0.0.0/8 -j REJECT")
    # The host's own address never reaches FORWARD: INPUT drops it.
    host = trail[(test_host.host_ip, 8080)]
    assert host["decision"] == "dropped" and "(the host itself)" in host["rule"]
    # Written by the runner that hosts the sandbox (its id), not by anything inside it.
    (actor,) = {e.actor for e in events}
    assert actor and actor not in ("control-plane", sandbox.sandbox_id)


def test_internet_mode_allows_public_and_names_the_accept_rule(
    up: Up, test_host: NetHost, defaults: SandboxDefaults
) -> None:
    with Sandbox.run(defaults=defaults) as sandbox:
        result = sandbox.exec(["python3", "-c", PROBE, "8080", test_host.ip_a]).result()
        assert result.stdout.split()[:2] == [test_host.ip_a, "reached"], result.stdout
        events = connections(up, sandbox.sandbox_id, want=1)
    attempt = by_destination(events)[(test_host.ip_a, 8080)]
    assert attempt["decision"] == "allowed"
    assert attempt["rule"].endswith("-j ACCEPT") and attempt["count"] == 1


def test_a_connection_flood_is_bounded_and_folded(
    up: Up, test_host: NetHost, defaults: SandboxDefaults
) -> None:
    """2,000 attempts at one blocked address: the trail folds them and stays small.

    The kernel logs at most 40 at once and 20 a second per sandbox; the runner folds
    repeats of one destination within half a second into one entry with a count.
    """
    with Sandbox.run(defaults=defaults) as sandbox:
        started = time.monotonic()
        result = sandbox.exec(["python3", "-c", FLOOD, test_host.private_b, "2000"]).result()
        elapsed = time.monotonic() - started
        assert result.stdout.strip() == "sent 2000", result.stderr
        assert connections(up, sandbox.sandbox_id, want=1)
        assert sandbox.exec(["true"]).result().returncode == 0  # still answering at once
        # Whatever was still folding arrives within a second; nothing more after that.
        events = connections(up, sandbox.sandbox_id, want=10_000, deadline_s=1.5)
    flood = [e.data for e in events if e.data["destination"] == test_host.private_b]
    counted = sum(d["count"] for d in flood)
    assert 1 <= counted <= 40 + 20 * (elapsed + 2)
    assert len(flood) <= 2 * (elapsed + 2) + 2  # folded: a handful of entries, not thousands
    assert all(d["decision"] == "rejected" for d in flood)
