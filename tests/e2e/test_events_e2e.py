"""A sandbox's activity trail on a real ``sandboxd up``: complete, ordered, its owner's only.

A member of ``team-a`` starts a sandbox, runs two execs (one exits 4), writes and reads a
small file (unary) and a large one (streamed), and deletes it. ``cwsandbox events`` (and the
API behind it) then shows exactly that, in order, with who asked, the exit codes, sizes and
digests; it is still readable after the delete; ``--follow`` prints an exec as it happens;
and a member of ``team-b`` finds no such sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cwsandbox import Sandbox, SandboxNotFoundError
from cwsandbox._events import iter_events
from sandboxd_protocol.sandboxd_v1 import admin_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2 as st
from tests.e2e.conftest import Platform
from tests.support.faults import wait_until
from tests.support.processes import admin_call, keyed_channel

CLI = str(Path(sys.executable).parent / "cwsandbox")


def member_key(platform: Platform, organization: str) -> tuple[str, str]:
    """(secret, key id) of a new member key of ``organization``."""
    created = admin_call(
        platform.target,
        platform.api_key,
        "CreateApiKey",
        admin_pb2.CreateApiKeyRequest(organization=organization, role=admin_pb2.ROLE_MEMBER),
        admin_pb2.CreateApiKeyResponse,
    )
    return str(created.secret), str(created.key.key_id)


@pytest.fixture
def team_a(quiet_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A member key of team-a in the environment; yields its key id."""
    secret, key_id = member_key(quiet_platform, "team-a")
    monkeypatch.setenv("CWSANDBOX_BASE_URL", quiet_platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", secret)
    yield key_id


def cli(*argv: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if key is not None:
        env["CWSANDBOX_API_KEY"] = key
    return subprocess.run(
        [CLI, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_trail_shows_what_happened_in_order_and_outlives_the_sandbox(
    team_a: str, quiet_platform: Platform
) -> None:
    small, large = b"hello trail\n", os.urandom(3 << 20)
    sandbox = Sandbox.run(profile_names=["locked-down"])
    sandbox.wait()
    sandbox_id = sandbox.sandbox_id
    assert sandbox.exec(["echo", "hi"]).result().returncode == 0
    assert sandbox.exec(["sh", "-c", "exit 4"]).result().returncode == 4
    sandbox.write_file("/tmp/small.txt", small).result()
    assert sandbox.read_file("/tmp/small.txt").result() == small
    sandbox.write_file_streaming("/tmp/large.bin", iter([large])).result()
    sandbox.stop().result()
    Sandbox.delete(sandbox_id).result()

    def trail() -> list[tuple[str, str, dict[str, object]]]:
        return [(e.kind, e.actor, e.data) for e in iter_events(sandbox_id)]

    wait_until("the delete recorded", lambda: "deleted" in [k for k, _, _ in trail()], 30)
    events = trail()
    kinds = [kind for kind, _, _ in events]
    me = f"api-key:{team_a}"
    for earlier, later in [
        ("placed", "running"),
        ("running", "exec"),
        ("exec", "file_written"),
        ("file_written", "file_read"),
        ("stop_requested", "ended"),
        ("ended", "deleted"),
    ]:
        assert kinds.index(earlier) < kinds.index(later), kinds
    execs = [(a, d) for k, a, d in events if k == "exec"]
    assert [(d["argv"], d["exit_code"]) for _, d in execs] == [
        (["echo", "hi"], 0),
        (["sh", "-c", "exit 4"], 4),
    ]
    assert all(actor == me for actor, _ in execs)
    written = [d for k, a, d in events if k == "file_written"]
    assert written[0] == {
        "path": "/tmp/small.txt",
        "size": len(small),
        "sha256": hashlib.sha256(small).hexdigest(),
        "outcome": "ok",
    }
    assert written[1]["path"] == "/tmp/large.bin" and written[1]["size"] == len(large)
    read = next(d for k, _, d in events if k == "file_read")
    # Our client reads over FileService (streamed: path and size, not hashed).
    assert read == {"path": "/tmp/small.txt", "streamed": True, "size": len(small)}
    ended = next(d for k, _, d in events if k == "ended")
    assert ended["status"] in ("completed", "terminated")

    # The CLI prints the same trail (also as JSON lines) after the sandbox is gone.
    shown = cli("events", sandbox_id)
    assert shown.returncode == 0, shown.stderr
    assert '"sh", "-c", "exit 4"' in shown.stdout and me in shown.stdout
    lines = cli("events", sandbox_id, "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == kinds


def test_a_large_files_digest_is_computed_aside_and_keeps_its_place(
    team_a: str, quiet_platform: Platform
) -> None:
    """A 6 MiB unary RetrieveFile (what official clients send) is hashed off the event loop;
    the exec after it stays after it in the trail."""
    large = os.urandom(6 << 20)
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.write_file_streaming("/tmp/large.bin", iter([large])).result()
        sandbox_id = sandbox.sandbox_id
        key, big = os.environ["CWSANDBOX_API_KEY"], [("grpc.max_receive_message_length", 64 << 20)]
        with keyed_channel(quiet_platform.target, key, options=big) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
            got = gateway.RetrieveFile(
                g.RetrieveFileSandboxRequest(sandbox_id=sandbox_id, filepath="/tmp/large.bin"),
                timeout=60,
            )
        assert got.file_contents == large
        sandbox.exec(["true"]).result()

    def trail() -> list[tuple[str, dict[str, object]]]:
        return [(e.kind, e.data) for e in iter_events(sandbox_id)]

    wait_until("the exec recorded", lambda: "exec" in [k for k, _ in trail()], 30)
    events = trail()
    kinds = [kind for kind, _ in events]
    assert kinds.index("file_read") < kinds.index("exec"), kinds
    read = next(d for k, d in events if k == "file_read")
    assert read["size"] == len(large)
    assert read["sha256"] == hashlib.sha256(large).hexdigest()


def test_follow_prints_an_exec_as_it_happens(team_a: str) -> None:
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        follower = subprocess.Popen(
            [CLI, "events", sandbox.sandbox_id, "--follow", "--json"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sandbox.exec(["echo", "live"]).result().returncode == 0
            deadline = time.monotonic() + 30
            assert follower.stdout is not None
            for line in follower.stdout:
                event = json.loads(line)
                if event["kind"] == "exec":
                    assert event["data"]["argv"] == ["echo", "live"]
                    break
                assert time.monotonic() < deadline, "no exec event while following"
        finally:
            follower.kill()
            follower.wait()


def test_another_organization_sees_no_trail(
    team_a: str, quiet_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        sandbox.exec(["true"]).result()
        mine = os.environ["CWSANDBOX_API_KEY"]
        other, _ = member_key(quiet_platform, "team-b")
        refused = cli("events", sandbox.sandbox_id, key=other)
        assert refused.returncode != 0
        assert f"sandbox {sandbox.sandbox_id!r} not found" in refused.stderr
        monkeypatch.setenv("CWSANDBOX_API_KEY", other)
        with pytest.raises(SandboxNotFoundError):
            list(iter_events(sandbox.sandbox_id))
        with pytest.raises(SandboxNotFoundError):  # nor can it act on it...
            Sandbox.from_id(sandbox.sandbox_id).result()
        with keyed_channel(quiet_platform.target, other) as channel:
            stub = streaming_pb2_grpc.GatewayStreamingServiceStub(channel)
            init = st.ExecStreamInit(sandbox_id=sandbox.sandbox_id, command=["true"])
            replies = stub.StreamExec(iter([st.ExecStreamRequest(init=init)]), timeout=30)
            with pytest.raises(grpc.RpcError) as caught:
                list(replies)
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        monkeypatch.setenv("CWSANDBOX_API_KEY", mine)
        # ...and its attempts wrote nothing into team-a's trail.
        kinds = [e.kind for e in iter_events(sandbox.sandbox_id)]
        assert kinds.count("exec") == 1 and "file_read" not in kinds, kinds


def test_pause_and_resume_are_in_the_trail(team_a: str, quiet_platform: Platform) -> None:
    with Sandbox.run(profile_names=["locked-down"]) as sandbox:
        sandbox.wait()
        with keyed_channel(quiet_platform.target, os.environ["CWSANDBOX_API_KEY"]) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = {"sandbox_id": sandbox.sandbox_id}
            gateway.Pause(g.PauseSandboxRequest(**request), timeout=60)
            gateway.Resume(g.ResumeSandboxRequest(**request), timeout=60)

        def kinds() -> list[str]:
            return [e.kind for e in iter_events(sandbox.sandbox_id)]

        wait_until("the resume recorded", lambda: "resumed" in kinds(), 30)
        found = [
            k for k in kinds() if k in ("pause_requested", "paused", "resume_requested", "resumed")
        ]
        assert found == ["pause_requested", "paused", "resume_requested", "resumed"], found
