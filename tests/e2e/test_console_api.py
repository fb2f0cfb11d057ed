"""The web console's HTTP API on a real ``sandboxd up``: identity, tenancy and its attacks.

Every request goes to the console over HTTP (httpx) or WebSockets (websockets), which calls
the real control plane's gRPC API with the signed-in key; sandboxes are real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import httpx
import pytest
import websockets

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2, gateway_pb2_grpc
from tests.e2e.conftest import Platform
from tests.support.console import Console, cookie_header, start_sandbox
from tests.support.faults import wait_until
from tests.support.processes import admin_call, keyed_channel


def create_key(platform: Platform, organization: str) -> str:
    response = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    )
    return str(response.secret)


@pytest.fixture(scope="module")
def console(platform: Platform) -> Console:
    return Console.of(platform.proc)


@pytest.fixture(scope="module")
def admin(console: Console, platform: Platform) -> Iterator[httpx.Client]:
    with console.signed_in(platform.api_key) as client:
        yield client


def status_of(client: httpx.Client, sandbox_id: str) -> str:
    return str(client.get(f"api/sandboxes/{sandbox_id}").json().get("sandbox_status", ""))


def stop(client: httpx.Client, sandbox_id: str) -> None:
    assert client.post(f"api/sandboxes/{sandbox_id}/stop", json={}).status_code == 200


def test_sign_in_refuses_a_wrong_key_and_sign_out_ends_the_session(
    console: Console, platform: Platform
) -> None:
    with console.client() as client:
        assert client.get("api/session").status_code == 401
        wrong = client.post("api/session", json={"api_key": "sbxk_0000000000000000_nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        assert client.post("api/session", json={}).json()["error"] == "api_key: required"
        good = client.post("api/session", json={"api_key": platform.api_key})
        assert good.status_code == 200 and good.json()["role"] == "admin"
        set_cookie = good.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert platform.api_key not in good.text  # the key never comes back to the browser
        stolen = dict(client.cookies.items())
        assert client.get("api/session").status_code == 200
        assert client.post("api/session/logout", json={}).status_code == 200
        assert client.get("api/session").status_code == 401
    with console.client(cookies=stolen) as replay:  # the old cookie is worthless after sign-out
        assert replay.get("api/session").status_code == 401


def test_a_member_cannot_see_another_organizations_sandbox(
    console: Console, platform: Platform
) -> None:
    key_a, key_b = create_key(platform, "console-a"), create_key(platform, "console-b")
    with console.signed_in(key_a) as a, console.signed_in(key_b) as b:
        sandbox_id = start_sandbox(a, "exec sleep infinity", tags=["console-tenancy"])
        try:
            assert a.get(f"api/sandboxes/{sandbox_id}").status_code == 200
            missing_id = "sb-" + "0" * 18
            for path in ("", "/events", "/stats"):
                theirs = b.get(f"api/sandboxes/{sandbox_id}{path}")
                missing = b.get(f"api/sandboxes/{missing_id}{path}")
                assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
                assert theirs.json()["code"] == missing.json()["code"] == "NOT_FOUND"
                assert theirs.json()["error"].replace(sandbox_id, "X") == missing.json()[
                    "error"
                ].replace(missing_id, "X")
            listed = b.get("api/sandboxes", params={"tag": "console-tenancy"}).json()
            assert sandbox_id not in json.dumps(listed)
            assert b.post(f"api/sandboxes/{sandbox_id}/stop", json={}).status_code == 404
            assert status_of(a, sandbox_id) != "SANDBOX_STATUS_COMPLETED"
            # Their logs and terminal sockets say "not found" and carry nothing.
            for kind in ("logs", "terminal"):
                control = asyncio.run(_first_message(console, b, f"{sandbox_id}/{kind}"))
                assert control == {
                    "type": "error",
                    "code": "NOT_FOUND",
                    "message": control["message"],
                }, control
            # The gRPC API answers the same for B's key.
            with keyed_channel(platform.target, key_b) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                with pytest.raises(grpc.RpcError) as raised:
                    stub.Get(gateway_pb2.GetSandboxRequest(sandbox_id=sandbox_id), timeout=30)
                assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        finally:
            stop(a, sandbox_id)


async def _first_message(console: Console, client: httpx.Client, path: str) -> object:
    async with websockets.connect(
        f"{console.ws_url}api/sandboxes/{path}",
        additional_headers={**cookie_header(client), "Origin": console.origin},
    ) as socket:
        message = await asyncio.wait_for(socket.recv(), 30)
    assert isinstance(message, str), message  # a control message, no bytes
    return json.loads(message)


def test_runner_actions_need_an_admin_key(
    console: Console, platform: Platform, admin: httpx.Client
) -> None:
    runner = platform.runner_id
    with console.signed_in(create_key(platform, "console-member")) as member:
        refused = member.post(f"api/runners/{runner}/cordon", json={})
        assert refused.status_code == 403 and "admin" in refused.json()["error"]
    try:
        assert admin.post(f"api/runners/{runner}/cordon", json={}).status_code == 200
        [row] = [r for r in admin.get("api/runners").json()["runners"] if r["runner_id"] == runner]
        assert row["cordoned"] is True
    finally:
        assert admin.post(f"api/runners/{runner}/uncordon", json={}).status_code == 200
    [row] = [r for r in admin.get("api/runners").json()["runners"] if r["runner_id"] == runner]
    assert row["cordoned"] is False
    unknown = admin.post(f"api/runners/{runner}/reboot", json={})
    assert unknown.status_code == 400 and unknown.json()["error"].startswith("action:")


def test_cross_site_requests_are_refused_before_they_act(
    console: Console, admin: httpx.Client
) -> None:
    before = len(admin.get("api/sandboxes").json()["sandboxes"])
    body = {"command": "/bin/true"}
    cookies = dict(admin.cookies.items())
    with httpx.Client(base_url=console.url, timeout=30, cookies=cookies) as bare:
        # A cross-site form or fetch: no Origin, or another site's.
        assert bare.post("api/sandboxes", json=body).status_code == 403
        evil = bare.post("api/sandboxes", json=body, headers={"origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-origin" in evil.text
        # A same-origin HTML form cannot send JSON: a form body is refused too.
        form = bare.post(
            "api/sandboxes",
            data={"command": "/bin/true"},
            headers={"origin": console.origin},
        )
        assert form.status_code == 415 and form.json()["error"].startswith("body:")
        # DNS rebinding: another name that resolves to 127.0.0.1 is not this console.
        rebound = bare.get("api/runners", headers={"host": "evil.example"})
        assert rebound.status_code == 421
        # No state changes on GET.
        assert bare.get("api/session/logout").status_code in (404, 405)
    assert admin.get("api/session").status_code == 200
    assert len(admin.get("api/sandboxes").json()["sandboxes"]) == before
    # A WebSocket from another site's page, or with no session, does not open.
    for headers in (
        {**cookie_header(admin), "Origin": "http://evil.example"},
        {"Origin": console.origin},
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            asyncio.run(_open(console, "sb-anything/terminal", headers))
        assert refused.value.response.status_code == 403


async def _open(console: Console, path: str, headers: dict[str, str]) -> None:
    async with websockets.connect(
        f"{console.ws_url}api/sandboxes/{path}", additional_headers=headers
    ):
        pass


def test_bad_input_is_refused_naming_the_field(admin: httpx.Client) -> None:
    before = len(admin.get("api/sandboxes").json()["sandboxes"])
    cases = {
        "args": {"command": "/bin/sh", "args": [1, 2]},
        "tags": {"command": "/bin/sh", "tags": {"a": 1}},
        "command": {"command": "", "args": []},
        "image": {"command": "/bin/true", "image": "no-such-image:0"},
    }
    for field, body in cases.items():
        reply = admin.post("api/sandboxes", json=body)
        assert 400 <= reply.status_code < 500, (field, reply.text)
        assert field in reply.json()["error"], (field, reply.text)
    status = admin.get("api/sandboxes", params={"status": "sleeping"})
    assert status.status_code == 400 and status.json()["error"].startswith("status:")
    events = admin.get("api/sandboxes/sb-x/events", params={"after": "-1"})
    assert events.status_code == 400 and events.json()["error"].startswith("after:")
    huge = admin.post("api/sandboxes", json={"command": "x" * 100_000})
    assert huge.status_code == 413
    assert len(admin.get("api/sandboxes").json()["sandboxes"]) == before


def test_logs_and_terminal_stream_over_websockets(console: Console, admin: httpx.Client) -> None:
    sandbox_id = start_sandbox(
        admin, "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.5; done"
    )
    try:
        wait_until(
            "the sandbox runs",
            lambda: status_of(admin, sandbox_id) == "SANDBOX_STATUS_RUNNING",
            timeout=120,
        )
        output = asyncio.run(_logs_and_terminal(console, admin, sandbox_id))
        assert b"line-1" in output["logs"] and b"line-3" in output["logs"]
        assert b"40 120" in output["terminal"]  # the TTY has the size the browser asked for
        assert b"99 33" in output["terminal"]  # and follows a resize
        stats = admin.get(f"api/sandboxes/{sandbox_id}/stats").json()
        assert stats["available"] is True and stats["memory_bytes"] > 0 and stats["pids"] >= 1
        kinds = [
            e["kind"] for e in admin.get(f"api/sandboxes/{sandbox_id}/events").json()["events"]
        ]
        assert "placed" in kinds and "running" in kinds
    finally:
        stop(admin, sandbox_id)
    wait_until(
        "the stopped sandbox ends",
        lambda: (
            status_of(admin, sandbox_id)
            in ("SANDBOX_STATUS_COMPLETED", "SANDBOX_STATUS_FAILED", "SANDBOX_STATUS_TERMINATED")
        ),
        timeout=60,
    )


async def _logs_and_terminal(
    console: Console, client: httpx.Client, sandbox_id: str
) -> dict[str, bytes]:
    headers = {**cookie_header(client), "Origin": console.origin}
    base = f"{console.ws_url}api/sandboxes/{sandbox_id}"
    logs = b""
    async with websockets.connect(f"{base}/logs", additional_headers=headers) as socket:
        while b"line-3" not in logs:
            chunk = await asyncio.wait_for(socket.recv(), 30)
            assert isinstance(chunk, bytes), chunk
            logs += chunk
    terminal = b""
    url = f"{base}/terminal?cols=120&rows=40"
    async with websockets.connect(url, additional_headers=headers) as socket:
        await socket.send(b"stty size\n")
        while b"40 120" not in terminal:
            terminal += await _bytes(socket)
        await socket.send(json.dumps({"type": "resize", "cols": 33, "rows": 99}))
        await socket.send(b"stty size\n")
        while b"99 33" not in terminal:
            terminal += await _bytes(socket)
        await socket.send(b"exit 7\n")
        while True:
            message = await asyncio.wait_for(socket.recv(), 30)
            if isinstance(message, str):
                assert json.loads(message) == {"type": "exit", "code": 7}
                break
    return {"logs": logs, "terminal": terminal}


async def _bytes(socket: websockets.ClientConnection) -> bytes:
    message = await asyncio.wait_for(socket.recv(), 30)
    assert isinstance(message, bytes), message
    return message


def test_a_revoked_key_ends_its_console_session(console: Console, platform: Platform) -> None:
    with console.signed_in(create_key(platform, "console-revoked")) as member:
        key_id = member.get("api/session").json()["key_id"]
        assert member.get("api/sandboxes").status_code == 200
        admin_call(
            platform.target,
            platform.api_key,
            "RevokeApiKey",
            admin_pb2.RevokeApiKeyRequest(key_id=key_id),
            admin_pb2.RevokeApiKeyResponse,
        )
        refused = member.get("api/sandboxes")
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]
        assert member.get("api/session").status_code == 401  # the session ended with it
