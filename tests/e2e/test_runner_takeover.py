"""A stolen join token does not buy an existing runner: its sandboxes keep running.

The platform's runner has a real sandbox. An impersonator with a fresh, valid join token
registers under the runner's id and advertises enormous capacity: it is refused, the real
runner keeps its connection, the sandbox stays RUNNING and usable, and new sandboxes keep
going to the real runner.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from cwsandbox import Sandbox
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.e2e.conftest import Platform
from tests.support.fake_runner import FakeRunner
from tests.support.processes import admin_call


def join_token(platform: Platform) -> str:
    response = admin_call(
        platform.target,
        platform.api_key,
        "CreateJoinToken",
        admin_pb2.CreateJoinTokenRequest(max_uses=3),
        admin_pb2.CreateJoinTokenResponse,
    )
    return str(response.secret)


async def impersonate(platform: Platform, token: str) -> grpc.aio.AioRpcError:
    async with FakeRunner(platform.target, token, platform.runner_id) as fake:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fake.connect()
        return caught.value


def test_an_impersonator_with_a_valid_token_cannot_replace_the_runner(
    quiet_platform: Platform,
) -> None:
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        error = asyncio.run(impersonate(quiet_platform, join_token(quiet_platform)))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "already holds a credential" in (error.details() or "")
        assert sandbox.exec(["echo", "still mine"]).result().stdout == "still mine\n"
        assert str(Sandbox.from_id(sandbox.sandbox_id).result().status).lower().endswith("running")
        with Sandbox.run(profile_names=["locked-down"]) as another:
            assert another.exec(["true"]).result().returncode == 0
            assert another.runner_id == quiet_platform.runner_id
