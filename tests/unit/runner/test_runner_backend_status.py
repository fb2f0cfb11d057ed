"""What a runner says about its backends: which work, why not, and what they support.

The control plane places sandboxes only on runners whose registration lists a working
backend that can provide the request (see controlplane/backend_support.py), so these
statuses must be honest: a backend's own fingerprint, or the reason there is none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from sandboxd.backends.base import Fingerprint
from sandboxd.backends.local.fingerprint import probe
from sandboxd.runner import RunnerAgent, cli
from sandboxd.runner.fingerprint import (
    DISABLED,
    NEEDS_ROOT,
    NOT_CONFIGURED,
    backend_status,
    unavailable_backend,
)
from sandboxd.runner.settings import RunnerSettings
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend


class DeclaringBackend(StandinBackend):
    """The stand-in, with a fingerprint chosen by the test (or one that raises)."""

    def __init__(self, found: Fingerprint | None) -> None:
        super().__init__()
        self.found = found

    async def fingerprint(self) -> Fingerprint:
        if self.found is None:
            raise OSError("probe crashed")
        return self.found


def settings(url: str, tmp_path: Path) -> RunnerSettings:
    return RunnerSettings(
        control_plane=url,
        join_token="good-token",
        state_dir=tmp_path / "state",
        heartbeat_interval=0.2,
        reconnect_backoff_min=0.05,
        reconnect_backoff_max=0.2,
    )


def first_register(fake_control_plane: Any, tmp_path: Path, **kwargs: Any) -> runner_pb2.Register:
    caps = runner_pb2.Capabilities(cpu_millicores=1000, memory_bytes=1 << 30, backends=["local"])

    async def main() -> runner_pb2.Register:
        async with fake_control_plane() as cp:
            agent = RunnerAgent(settings(cp.url, tmp_path), capabilities=caps, **kwargs)
            task = asyncio.create_task(agent.run())
            try:
                message = await cp.next_message("register")
                register: runner_pb2.Register = message.message.register
                return register
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(main())


def test_a_working_backend_registers_with_what_it_supports(fake_control_plane, tmp_path):
    found = Fingerprint(
        "standin", True, egress_types=("none", "internet"), ingress_types=("public",), gpus=True
    )
    register = first_register(fake_control_plane, tmp_path, backend=DeclaringBackend(found))
    assert list(register.capabilities.backends) == ["standin"]
    assert list(register.capabilities.backend_statuses) == [
        runner_pb2.BackendStatus(
            name="standin",
            available=True,
            egress_types=["none", "internet"],
            ingress_types=["public"],
            gpus=True,
        )
    ]


def test_a_backend_whose_fingerprint_fails_registers_as_unavailable(fake_control_plane, tmp_path):
    found = Fingerprint("standin", False, reason="cgroup /sys/fs/cgroup is not writable")
    register = first_register(fake_control_plane, tmp_path, backend=DeclaringBackend(found))
    assert list(register.capabilities.backends) == []
    [status] = register.capabilities.backend_statuses
    assert (status.name, status.available, status.reason) == (
        "standin",
        False,
        "cgroup /sys/fs/cgroup is not writable",
    )
    register = first_register(fake_control_plane, tmp_path, backend=DeclaringBackend(None))
    [status] = register.capabilities.backend_statuses
    assert (status.available, status.reason) == (False, "fingerprint failed: probe crashed")


def test_without_a_backend_the_runner_says_why(fake_control_plane, tmp_path):
    register = first_register(fake_control_plane, tmp_path)
    assert list(register.capabilities.backends) == []  # not the host fingerprint's "local"
    assert list(register.capabilities.backend_statuses) == [
        unavailable_backend("local", NOT_CONFIGURED)
    ]
    given = [unavailable_backend("local", NEEDS_ROOT)]
    register = first_register(fake_control_plane, tmp_path, unavailable_backends=given)
    assert list(register.capabilities.backend_statuses) == given


def test_the_cli_names_the_reason_for_no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.choose_backend("none") == ("none", [unavailable_backend("local", DISABLED)])
    assert cli.choose_backend("local") == ("local", [])
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.choose_backend(None) == ("none", [unavailable_backend("local", NEEDS_ROOT)])
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli.choose_backend(None) == ("local", [])


def test_fingerprint_statuses_carry_the_reason_only_when_unavailable() -> None:
    working = backend_status(Fingerprint("local", True, reason="ignored", egress_types=("none",)))
    assert (working.available, working.reason, list(working.egress_types)) == (True, "", ["none"])
    broken = backend_status(Fingerprint("local", False))
    assert (broken.available, broken.reason) == (False, "unavailable")


def test_the_local_backend_lists_its_network_types_and_no_gpus() -> None:
    found = probe("local", ipaddress.ip_network("10.250.0.0/16"))
    assert "none" in found.egress_types
    assert set(found.ingress_types) == {"public", "internal"}
    assert found.gpus is False
    if os.geteuid() != 0:
        assert not found.available and "needs root" in found.reason
