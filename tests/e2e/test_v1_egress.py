"""v1 network options and egress rules onto the profiles' egress modes, on real sandboxes.

The platform's default profile offers ``internet``, ``none`` and an allowlist of two private
neighbours (one network namespace this module creates, ``tests/backends/nethost.py``). The
official 1.22.0 client asks in v1 terms: ``deny_egress`` reaches nobody, an ``any`` rule the
internet stand-in only, a ``cidr`` rule exactly that CIDR (narrower than the profile's
allowlist), and a rule wider than what the profile allows is refused, never widened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.nethost import NetHost, test_host
from tests.e2e.conftest import run_python
from tests.support.egress_profiles import egress_config
from tests.support.official import OFFICIAL_V1_VERSION, official_python
from tests.support.processes import Up, all_in_one, child_env

__all__ = ["test_host"]
pytestmark = pytest.mark.official

SCRIPT = r"""
import json, sys, cwsandbox
from cwsandbox import NetworkOptions, EgressRule, Sandbox
targets = TARGETS
PROBE = '''
import socket, sys
for ip in sys.argv[1:]:
    try:
        with socket.create_connection((ip, 8080), timeout=10) as s:
            print(ip, "reached" if s.recv(64).startswith(b"hello ") else "odd")
    except OSError as e:
        print(ip, "blocked", repr(e).replace(" ", "_"))
'''
def probe(network):
    with Sandbox.run(network=network) as sb:
        got = sb.exec(["python3", "-c", PROBE, *targets]).result().stdout
        egress = [r.cidr.cidr if r.cidr else ("any" if r.any else "?")
                  for r in sb.effective_egress]
    lines = [line.split() for line in got.splitlines()]
    errors.update({f[0]: f[2] for f in lines if len(f) > 2})
    return [{f[0]: f[1] for f in lines}, egress]
errors = {}
out = {
    "default": probe(None),
    "deny": probe(NetworkOptions(deny_egress=True)),
    "any": probe(NetworkOptions(egress=[EgressRule(any=True)])),
    "cidr": probe(NetworkOptions(egress=[EgressRule(cidr=PRIVATE_A)])),
}
try:
    Sandbox.run(network=NetworkOptions(egress=[EgressRule(cidr="10.0.0.0/8")])).wait()
except cwsandbox.SandboxError as e:
    out["wider"] = [type(e).__name__, e.reason]
out["errors"] = errors  # why each "blocked" was blocked, for a failure's message
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, test_host: NetHost) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("egress-v1-up")
    config = data / "platform.yaml"
    config.write_text(
        egress_config("egress-v1", [test_host.private_a, test_host.private_b], none_mode=True)
    )
    with all_in_one(Path(data), "--config", str(config)) as platform:
        yield platform


def test_v1_egress_rules_map_onto_egress_modes(up: Up, test_host: NetHost) -> None:
    targets = [test_host.ip_a, test_host.private_a, test_host.private_b]
    source = SCRIPT.replace("TARGETS", repr(targets)).replace(
        "PRIVATE_A", repr(f"{test_host.private_a}/32")
    )
    env = child_env(CWSANDBOX_BASE_URL=up.base_url, CWSANDBOX_API_KEY=up.api_key)
    got = json.loads(run_python(official_python(OFFICIAL_V1_VERSION), source, env))
    internet = {test_host.ip_a: "reached", test_host.private_a: "blocked"}
    internet[test_host.private_b] = "blocked"
    only_a = {ip: "blocked" for ip in targets} | {test_host.private_a: "reached"}
    expected = {
        "default": [internet, ["any"]],
        "any": [internet, ["any"]],
        "deny": [{ip: "blocked" for ip in targets}, []],
        "cidr": [only_a, [f"{test_host.private_a}/32"]],
        "wider": ["SandboxError", "CWSANDBOX_NO_SUITABLE_RUNNER"],
    }
    errors = got.pop("errors")
    assert got == expected, f"connection errors: {errors}"
