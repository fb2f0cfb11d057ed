"""The discovery guide's three Sandbox code blocks run verbatim against the stand-in.

``examples/sandbox_*.py`` are byte-for-byte copies of the guide's blocks (checked below).
Each runs in a subprocess against the in-process stand-in (discovery + gateway), which
answers exec with canned output; it is a stand-in for client-side tests only, and the
same examples against the real control plane belong to the e2e suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.client.sandbox.gateway_standin import Gateway

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"
GUIDE = Path("/work/shared/seed/000_4596ebc51dc86116.txt")

EXPECTED = {
    "sandbox_target_profile.py": "ran: ['curl', '-s', 'https://httpbin.org/ip']",
    "sandbox_network_options.py": "connected",
    "sandbox_session_defaults.py": "running on discovered profile",
}


def run_example(gateway: Gateway, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CWSANDBOX_BASE_URL": gateway.url}
    env.pop("CWSANDBOX_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(gateway: Gateway, name: str) -> None:
    done = run_example(gateway, name)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[name] in done.stdout.splitlines()
    start = gateway.servicer.requests("Start")[0]
    assert list(start.profile_ids) == ["default"]  # profiles[0].profile_name
    assert start.container_image == "python:3.11"
    if name == "sandbox_network_options.py":
        assert start.network.egress_mode == "internet"
    # Every example leaves its sandbox stopped (context-manager or session exit).
    assert [r.sandbox_id for r in gateway.servicer.requests("Stop")] == ["sb-1"]
    init = gateway.servicer.requests("StreamExec")[0].init
    assert init.sandbox_id == "sb-1"


@pytest.mark.skipif(not GUIDE.exists(), reason="the discovery guide is not available")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_is_verbatim_guide_block(name: str) -> None:
    blocks = re.findall(r'```python theme=\{"system"\}\n(.*?)```', GUIDE.read_text(), re.S)
    assert (EXAMPLES / name).read_text() in blocks
