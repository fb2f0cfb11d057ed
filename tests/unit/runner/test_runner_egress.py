"""The runner blocks its control plane's addresses for every sandbox with egress.

Name resolution is real where it stays on this machine (``localhost`` comes from
``/etc/hosts``). The failure and caching cases use a resolver function instead, because a
failing real lookup would send DNS queries to the host's resolver, which tests must not do.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from sandboxd.runner.cli import runner_command
from sandboxd.runner.egress import ControlPlaneAddresses
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.exec_standin import Rig, run_rig, spec, start


def test_localhost_resolves_through_the_real_resolver() -> None:
    cidrs = asyncio.run(ControlPlaneAddresses("http://localhost:50051").cidrs())
    assert "127.0.0.1/32" in cidrs
    assert all(c.endswith("/32") and ":" not in c for c in cidrs)


def refuse(*_args: Any) -> list[tuple[Any, ...]]:
    raise AssertionError("an IP literal must not be resolved")


def test_ip_literals_need_no_lookup() -> None:
    v4 = ControlPlaneAddresses("https://203.0.113.9", resolve=refuse)
    assert asyncio.run(v4.cidrs()) == ("203.0.113.9/32",)
    v6 = ControlPlaneAddresses("http://[2001:db8::1]:50051", resolve=refuse)
    assert asyncio.run(v6.cidrs()) == ()  # sandboxes have no IPv6


def test_a_failed_lookup_keeps_the_last_answer() -> None:
    answers: list[object] = [
        [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.51.100.4", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::4", 0, 0, 0)),
        ],
        OSError("temporary failure in name resolution"),
    ]
    calls: list[str] = []

    def resolve(host: str, *_rest: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    async def body() -> None:
        cp = ControlPlaneAddresses("https://cp.example:443", ttl=0.0, resolve=resolve)
        assert await cp.cidrs() == ("198.51.100.4/32",)
        assert await cp.cidrs() == ("198.51.100.4/32",)  # the failure keeps it
        assert await cp.cidrs() == ("198.51.100.4/32",)  # and is not retried at once
        assert calls == ["cp.example", "cp.example"]

    asyncio.run(body())


def test_supervisor_puts_the_control_plane_into_every_networked_spec(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        internet = runner_pb2.NetworkPolicy(egress_type="internet")
        await rig.run("1", **start(spec("sb-net", network=internet)))
        await rig.run("2", **start(spec("sb-none")))
        assert rig.backend.world["sb-net"].spec.network.blocked == ("203.0.113.9/32",)
        assert rig.backend.world["sb-none"].spec.network.blocked == ()

    run_rig(tmp_path, body, control_plane="http://203.0.113.9:50051")


def test_configured_blocks_join_the_control_plane(tmp_path: Path) -> None:
    async def body(rig: Rig) -> None:
        internet = runner_pb2.NetworkPolicy(egress_type="internet")
        await rig.run("1", **start(spec("sb-net", network=internet)))
        assert rig.backend.world["sb-net"].spec.network.blocked == (
            "203.0.113.9/32",
            "198.51.100.0/24",
        )

    run_rig(
        tmp_path,
        body,
        control_plane="http://203.0.113.9:50051",
        egress_blocked=("198.51.100.0/24",),
    )


def test_a_bad_block_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        runner_command,
        ["--control-plane", "http://127.0.0.1:1", "--state-dir", str(tmp_path),
         "--block-egress", "not-a-cidr"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not-a-cidr" in result.output
