"""Egress through the whole platform: profiles from a YAML config, a real ``sandboxd up``.

The neighbours are one network namespace this module creates (``tests/backends/nethost.py``):
a public stand-in address and private ones. ``internet`` must reach the first and none of
the others; an ``allowlist`` mode in the administrator's profile that names one private
address reaches exactly that one. No packet goes anywhere but that namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cwsandbox import NetworkOptions, Sandbox, SandboxDefaults
from tests.backends.nethost import NetHost, test_host
from tests.support.egress_profiles import egress_config
from tests.support.processes import Up, all_in_one

__all__ = ["test_host"]

PROBE = """
import socket, sys
for ip in sys.argv[1:]:
    try:
        with socket.create_connection((ip, 8080), timeout=10) as s:
            print(ip, "reached" if s.recv(64).startswith(b"hello ") else "odd")
    except OSError as e:
        print(ip, "blocked", repr(e).replace(" ", "_"))
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, test_host: NetHost) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("egress-up")
    config = data / "platform.yaml"
    config.write_text(egress_config("egress-test", [test_host.private_a]))
    with all_in_one(Path(data), "--config", str(config)) as platform:
        yield platform


def probe(sandbox: Sandbox, *ips: str) -> dict[str, str]:
    """``ip -> "reached" | "blocked"``; each blocked one's error is kept in PROBE_ERRORS."""
    result = sandbox.exec(["python3", "-c", PROBE, *ips]).result()
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    PROBE_ERRORS.update({f[0]: f[2] for f in lines if len(f) > 2})
    return {f[0]: f[1] for f in lines}


PROBE_ERRORS: dict[str, str] = {}


def test_internet_and_allowlist_modes_from_the_config(
    up: Up, test_host: NetHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWSANDBOX_API_KEY", up.api_key)
    defaults = SandboxDefaults(base_url=up.base_url, tags=("egress-e2e",))
    everyone = (test_host.ip_a, *test_host.non_public)
    with Sandbox.run(defaults=defaults) as internet:
        seen = probe(internet, *everyone)
    expected = {test_host.ip_a: "reached"} | {ip: "blocked" for ip in test_host.non_public}
    assert seen == expected, PROBE_ERRORS
    lan = NetworkOptions(egress_mode="lan")
    with Sandbox.run(defaults=defaults, network=lan) as allowlisted:
        seen = probe(allowlisted, *everyone)
    assert seen == {ip: "blocked" for ip in everyone} | {test_host.private_a: "reached"}, (
        PROBE_ERRORS
    )
