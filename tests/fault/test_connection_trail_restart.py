"""A runner SIGKILLed and restarted still records its re-adopted sandboxes' connection attempts.

The firewall rules its predecessor wrote log to an NFLOG group fixed by the backend's key, so
the new process binds the same group; it never wrote those rules itself, so it reads them
back from the kernel to name the rule that decided. The attempt goes to the control plane's
private address (rejected by the runner's host, so no packet reaches it).
"""

from __future__ import annotations

import pytest

from cwsandbox._events import iter_events
from tests.support.faults import RECOVERY, UNHEALTHY_BOUND, Cluster, wait_until

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 81), timeout=2)
    print("reached")
except OSError as e:
    print("blocked", type(e).__name__)
"""


def test_attempts_after_a_runner_restart_are_recorded(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_API_KEY", cluster.control_plane.admin_key)
    gateway = cluster.gateway()
    sandbox_id = gateway.start(cluster.runner_id, profile="default")  # internet egress
    cluster.runner.kill()
    cluster.wait_health(False, UNHEALTHY_BOUND + 2)
    cluster.runner.start()
    cluster.wait_health(True, RECOVERY)

    target = cluster.control_plane.listen_host  # routed from the runner's host; 10/8
    result = gateway.exec(sandbox_id, "python3", "-c", PROBE, target)
    assert result.stdout.split()[0] == b"blocked", result

    def attempts() -> list[dict[str, object]]:
        events = iter_events(sandbox_id, base_url=cluster.control_plane.url, timeout=10)
        return [e.data for e in events if e.kind == "connection"]

    found: list[dict[str, object]] = []

    def recorded() -> bool:
        found[:] = attempts()
        return any(d["destination"] == target for d in found)

    wait_until("the attempt in the trail", recorded, 20)
    attempt = next(d for d in found if d["destination"] == target)
    assert attempt["decision"] == "rejected" and attempt["port"] == 81
    assert str(attempt["rule"]).startswith("SANDBOXD-NONPUBLIC -d 10.0.0.0/8 -j REJECT")
