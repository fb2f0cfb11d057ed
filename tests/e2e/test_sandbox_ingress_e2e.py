"""Exposed ports through the whole platform: Start returns a service address that works."""

from __future__ import annotations

import time
import urllib.request

import pytest

from cwsandbox import NetworkOptions, Sandbox, SandboxDefaults, SandboxError
from tests.e2e.conftest import Platform


def test_internal_ingress_publishes_on_host_loopback(platform: Platform) -> None:
    defaults = SandboxDefaults(base_url=platform.base_url)
    server = ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", "/usr"]
    with Sandbox.run(
        *server,
        defaults=defaults,
        network=NetworkOptions(ingress_mode="internal", exposed_ports=[8000]),
    ) as sandbox:
        sandbox.wait()
        host, _, port = sandbox.service_address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert [p[0] for p in sandbox.exposed_ports] == [8000]
        body = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{sandbox.service_address}/", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.2)
        assert b"bin/" in body  # the directory listing of the sandbox's /usr


def test_ingress_mode_the_profile_lacks_is_refused(platform: Platform) -> None:
    defaults = SandboxDefaults(base_url=platform.base_url)
    with pytest.raises(SandboxError) as caught:
        Sandbox.run(
            profile_names=["locked-down"],
            network=NetworkOptions(ingress_mode="public", exposed_ports=[8000]),
            defaults=defaults,
        ).wait()
    assert caught.value.reason == "CWSANDBOX_PROFILE_MISMATCH"
    assert "network.ingress_mode" in str(caught.value)
