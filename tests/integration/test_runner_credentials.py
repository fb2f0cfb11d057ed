"""Runner credentials on a real control plane: join once, then only the runner's own credential.

Real ``sandboxd controlplane`` and ``sandboxd runner`` processes, plus runners impersonated
over the real protocol (:mod:`tests.support.fake_runner`) for what an attacker holding a valid
join token would try: take over a registered runner id, or attach to another runner's exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
from click.testing import CliRunner

from sandboxd.cli import main
from sandboxd.identity.keyformat import SecretKind, mint
from sandboxd.runner.credentials import PENDING_FILE, load_credential, save_credential
from sandboxd_protocol.sandboxd_v1 import admin_pb2, runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2, streaming_pb2
from tests.support.fake_runner import FakeRunner, exec_exit, status_of
from tests.support.faults import wait_until
from tests.support.processes import SANDBOXD, ControlPlaneProcess, RunnerProcess, child_env

NO_BACKEND = ["--backend", "none"]


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    control_plane = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    yield control_plane
    control_plane.stop()


def runner(
    cp: ControlPlaneProcess, state: Path, runner_id: str, token: str | None = None
) -> RunnerProcess:
    return RunnerProcess(cp, state, runner_id=runner_id, join_token=token, extra_args=NO_BACKEND)


def admitted(cp: ControlPlaneProcess, state: Path, runner_id: str, token: str | None) -> None:
    """Start the runner, wait until the control plane lists it healthy, then stop it."""
    process = runner(cp, state, runner_id, token).start()
    try:
        with cp.discovery() as client:
            client.wait_for(runner_id, healthy=True)
    finally:
        process.stop()


def exit_status(process: RunnerProcess, timeout: float = 20) -> int:
    assert process.proc is not None
    return process.proc.popen.wait(timeout=timeout)


def tokens(cp: ControlPlaneProcess) -> dict[str, admin_pb2.JoinToken]:
    listed = cp.admin(
        "ListJoinTokens",
        admin_pb2.ListJoinTokensRequest(include_spent=True),
        admin_pb2.ListJoinTokensResponse,
    )
    return {t.token_id: t for t in listed.tokens}


def test_a_single_use_token_admits_exactly_one_runner(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    token = cp.create_join_token(max_uses=1)
    first = runner(cp, tmp_path / "first", "first", token).start()
    try:
        with cp.discovery() as client:
            client.wait_for("first", healthy=True)
        second = runner(cp, tmp_path / "second", "second", token).start()
        assert exit_status(second) == 3
        assert "used up" in second.proc.output  # type: ignore[union-attr]
        with cp.discovery() as client:
            assert [r.runner_id for r in client.all_runners()] == ["first"]
            client.wait_for("first", healthy=True)
        # The first runner holds its own credential now: a restart needs no token at all.
        first.stop()
        admitted(cp, tmp_path / "first", "first", token="")
    finally:
        first.stop()


def test_a_group_named_by_the_token_sticks_and_otherwise_the_runner_chooses(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    def group_after_start(state: str, runner_id: str, group: str, token: str | None) -> str:
        process = RunnerProcess(
            cp, tmp_path / state, runner_id=runner_id, group=group, join_token=token,
            extra_args=NO_BACKEND,
        ).start()  # fmt: skip
        try:
            with cp.discovery() as client:
                runner, _ = client.wait_for(runner_id, healthy=True)
            # Listed healthy can come just before the runner saved its credential; the next
            # start of this state directory (no token) needs it.
            credential = tmp_path / state / "runner-credential"
            wait_until("the runner saved its credential", credential.exists, timeout=20)
            return runner.runner_group_id
        finally:
            process.stop()

    fixed = cp.create_join_token(runner_group_id="gpu-pool")
    assert group_after_start("pinned", "pinned", "asked-for", fixed) == "gpu-pool"
    assert group_after_start("pinned", "pinned", "asked-again", "") == "gpu-pool"
    assert group_after_start("free", "free", "east", None) == "east"
    assert group_after_start("free", "free", "west", "") == "west"


def test_an_expired_token_admits_nobody(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = cp.create_join_token(ttl_seconds=1)
    token_id = token.split("_")[1]
    expires = tokens(cp)[token_id].expires_at.ToDatetime().replace(tzinfo=UTC)
    while datetime.now(UTC) <= expires:  # wait for the expiry itself, not a guess
        time.sleep(0.05)
    late = runner(cp, tmp_path / "late", "late", token).start()
    assert exit_status(late) == 3
    assert f"join token {token_id} expired" in late.proc.output  # type: ignore[union-attr]


def test_a_valid_join_token_cannot_take_over_a_registered_runner(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    real = runner(cp, tmp_path / "alpha", "alpha").start()
    try:
        with cp.discovery() as client:
            before, _ = client.wait_for("alpha", healthy=True)
        stolen = cp.create_join_token(max_uses=5)

        async def impersonate() -> grpc.aio.AioRpcError:
            async with FakeRunner(cp.target, stolen, "alpha") as fake:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await fake.connect()
                return caught.value

        error = asyncio.run(impersonate())
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "runner id 'alpha' already holds a credential" in (error.details() or "")
        # The real runner kept its connection (same connected_at) and stays healthy; the
        # refused attempt did not even spend a use of the token.
        with cp.discovery() as client:
            after, _ = client.wait_for("alpha", healthy=True)
        assert after.connected_at == before.connected_at
        assert tokens(cp)[stolen.split("_")[1]].uses == 0
        assert real.proc is not None and real.proc.popen.poll() is None
    finally:
        real.stop()


def test_a_revoked_runner_is_dropped_and_cannot_register_again(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    beta = runner(cp, tmp_path / "beta", "beta").start()
    with cp.discovery() as client:
        client.wait_for("beta", healthy=True)
    revoke = subprocess.run(
        [*SANDBOXD, "runners", "revoke", "beta"],
        env=child_env(CWSANDBOX_BASE_URL=cp.url, CWSANDBOX_API_KEY=cp.admin_key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr
    assert revoke.stdout.startswith("revoked runner beta")
    assert exit_status(beta) == 3  # disconnected, its redial refused: it gives up
    assert "was revoked" in beta.proc.output  # type: ignore[union-attr]
    env = {"CWSANDBOX_BASE_URL": cp.url, "CWSANDBOX_API_KEY": cp.admin_key}
    listed = CliRunner().invoke(main, ["runners", "ls", "--all", "--json"], env=env)
    [entry] = [c for c in json.loads(listed.output) if c["runner_id"] == "beta"]
    assert entry["revoked_at"] and entry["credential_id"]
    assert "beta" not in CliRunner().invoke(main, ["runners", "ls"], env=env).output
    with cp.discovery() as client:
        client.wait_for("beta", healthy=False)
    # Its stored credential stays refused, and the (unpinned) token it falls back to cannot
    # reclaim the id; nor can another host with a valid token.
    again = runner(cp, tmp_path / "beta", "beta").start()
    assert exit_status(again) == 3
    assert "trying the join token" in again.proc.output  # type: ignore[union-attr]
    other_host = runner(cp, tmp_path / "elsewhere", "beta").start()
    assert exit_status(other_host) == 3
    assert "already holds a revoked credential" in other_host.proc.output  # type: ignore[union-attr]
    # Only a token pinned to the id re-admits it (an operator's deliberate act).
    admitted(cp, tmp_path / "beta", "beta", cp.create_join_token(runner_id="beta"))


def test_operation_streams_bind_only_to_the_owning_runners_connection(
    cp: ControlPlaneProcess,
) -> None:
    async def scenario() -> None:
        async with (
            FakeRunner(cp.target, cp.join_token, "owner") as owner,
            FakeRunner(cp.target, cp.join_token, "intruder") as intruder,
        ):
            await owner.connect()
            await intruder.connect()
            assert owner.secret.startswith("sbxr_") and intruder.secret.startswith("sbxr_")
            metadata = (("authorization", f"Bearer {cp.admin_key}"),)
            async with grpc.aio.insecure_channel(cp.target) as channel:
                start = channel.unary_unary(
                    "/coreweave.sandbox.v1beta2.GatewayService/Start",
                    request_serializer=gateway_pb2.StartSandboxRequest.SerializeToString,
                    response_deserializer=gateway_pb2.StartSandboxResponse.FromString,
                )
                started = await start(
                    gateway_pb2.StartSandboxRequest(command="true", runner_ids=["owner"]),
                    metadata=metadata,
                    timeout=10,
                )
                command = await owner.command()
                assert command.start.spec.sandbox_id == started.sandbox_id
                await owner.answer(command, started=runner_pb2.SandboxStarted())
                await owner.running(started.sandbox_id)
                get = channel.unary_unary(
                    "/coreweave.sandbox.v1beta2.GatewayService/Get",
                    request_serializer=gateway_pb2.GetSandboxRequest.SerializeToString,
                    response_deserializer=gateway_pb2.GetSandboxResponse.FromString,
                )
                async with asyncio.timeout(10):  # the report is stored, then the sandbox runs
                    while (
                        await get(
                            gateway_pb2.GetSandboxRequest(sandbox_id=started.sandbox_id),
                            metadata=metadata,
                        )
                    ).sandbox_status != gateway_pb2.SANDBOX_STATUS_RUNNING:
                        await asyncio.sleep(0.01)

                # The intruder offers idle streams on its own connection before the exec.
                decoy = intruder.idle()
                stream = channel.stream_stream(
                    "/coreweave.sandbox.v1beta2.GatewayStreamingService/StreamExec",
                    request_serializer=streaming_pb2.ExecStreamRequest.SerializeToString,
                    response_deserializer=streaming_pb2.ExecStreamResponse.FromString,
                )
                client = stream(metadata=metadata, timeout=30)
                init = streaming_pb2.ExecStreamInit(sandbox_id=started.sandbox_id, command=["id"])
                await client.write(streaming_pb2.ExecStreamRequest(init=init))

                # Another runner, with its own valid credential, naming the owner's
                # connection: refused unread (an idle stream joins only its own runner's pool).
                assert owner.registered is not None
                claim = intruder.idle(connection=owner.registered.connection_id)
                assert await status_of(claim) is grpc.StatusCode.FAILED_PRECONDITION
                # A connection id that is no number, or an old one: refused too.
                for stale in ("x", 0, "-1"):
                    call = owner.idle(connection=stale)
                    assert await status_of(call) is grpc.StatusCode.FAILED_PRECONDITION
                # The owner with a join token instead of its credential: refused unread.
                token = owner.idle(secret=cp.join_token)
                assert await status_of(token) is grpc.StatusCode.UNAUTHENTICATED

                # The owner's own idle stream gets the exec, with no round trip.
                upstream = owner.idle()
                async with asyncio.timeout(10):
                    opened = await upstream.read()
                assert opened.exec.sandbox_id == started.sandbox_id
                assert opened.exec.command == ["id"] and opened.exec.stream_id
                await upstream.write(exec_exit(0))
                first = await client.read()
                second = await client.read()
                assert first.WhichOneof("response") == "ready"  # sent by the control plane
                assert second.exit.exit_code == 0
                await client.done_writing()
                upstream.cancel()
                # The intruder's decoy never saw any of it.
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await decoy.read()
                decoy.cancel()

    asyncio.run(scenario())


def test_state_and_secrets_are_private(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    token = cp.create_join_token()
    gamma = runner(cp, tmp_path / "gamma", "gamma", token).start()
    try:
        with cp.discovery() as client:
            client.wait_for("gamma", healthy=True)
        mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
        assert mode(cp.data_dir) == 0o700
        assert mode(cp.data_dir / "controlplane.db") == 0o600
        assert mode(cp.data_dir / "admin-key") == 0o600
        assert not (cp.data_dir / "join-token").exists()  # no shared token any more
        # The runner writes its credential when it reads the answer to its registration,
        # which can be just after the control plane lists it healthy.
        credential = tmp_path / "gamma" / "runner-credential"
        wait_until("the runner saved its credential", credential.exists, timeout=20)
        assert mode(credential) == 0o600
        # Nothing secret on any command line (ps shows them to every local user).
        for process in (cp.proc, gamma.proc):
            assert process is not None
            cmdline = Path(f"/proc/{process.popen.pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline
            assert cp.admin_key.encode() not in cmdline
            assert b"sbx" not in cmdline
    finally:
        gamma.stop()


def test_cli_refuses_a_token_on_the_command_line() -> None:
    result = subprocess.run(
        [*SANDBOXD, "runner", "--control-plane", "http://127.0.0.1:1", "--join-token", "x"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--join-token-file" in result.stderr and "SANDBOXD_JOIN_TOKEN" in result.stderr


class AnswersLost:
    """A TCP relay to the control plane that passes what the runner sends and, of what comes
    back, only the connection's own HTTP/2 frames (settings, pings: stream 0), so the join
    arrives and the runner never hears an answer on any call.

    ``lose_from`` says, for each new connection, whether its answers are lost (always, by
    default). A test whose runner must hear a refusal first loses answers only once the
    runner stored the credential it proposes, which it does before it dials its join.
    Counting connections instead was flaky: a first session that ended for another reason
    (a slow CI machine) spent the one answered connection, and the refusal was lost."""

    def __init__(self, target: str, lose_from: Callable[[], bool] = lambda: True) -> None:
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._lose_from = lose_from
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._upstream)
                self._sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
                back = self._answers if self._lose_from() else self._pump
                threading.Thread(target=back, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)

    @staticmethod
    def _answers(source: socket.socket, sink: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                buffer += chunk
                while len(buffer) >= 9:  # a frame header: length(3) type flags stream(4)
                    size = 9 + int.from_bytes(buffer[:3], "big")
                    if len(buffer) < size:
                        break
                    frame, buffer = buffer[:size], buffer[size:]
                    if int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF == 0:
                        sink.sendall(frame)

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def join_unanswered_then_kill(
    cp: ControlPlaneProcess, state: Path, relay: AnswersLost, token: str | None = None
) -> None:
    """Runner "alpha" joins through ``relay``; SIGKILLed once the control plane lists it."""
    through_relay = [*NO_BACKEND, "--control-plane", relay.url]  # the last one given wins
    joining = RunnerProcess(
        cp, state, runner_id="alpha", join_token=token, extra_args=through_relay
    )
    joining.start()
    try:
        with cp.discovery() as client:
            listed = lambda: "alpha" in [r.runner_id for r in client.all_runners()]  # noqa: E731
            try:
                wait_until("the join reached the control plane", listed, 30)
            except AssertionError as exc:  # what the runner said, to tell why
                assert joining.proc is not None
                raise AssertionError(f"{exc}; the runner said:\n{joining.proc.output}") from None
    finally:
        assert joining.proc is not None
        joining.proc.kill()  # a crash: it never heard the answer
        relay.close()


def test_a_runner_that_dies_before_hearing_its_join_answer_comes_back_with_its_credential(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    """The control plane binds the runner id when it accepts the join; a runner killed before
    the answer reached it used to hold no credential, and was refused for good ("already holds
    a credential") until an operator made a token pinned to it. Now the runner stores the
    credential it proposes before it sends the join."""
    join_unanswered_then_kill(cp, tmp_path / "alpha", AnswersLost(cp.target))
    stored = json.loads((tmp_path / "alpha" / "runner-credential").read_text())
    assert stored["runner_id"] == "alpha" and stored["credential"].startswith("sbxr_")
    # Back without any join token: only the stored credential can let it in.
    admitted(cp, tmp_path / "alpha", "alpha", token="")


def test_a_runner_that_dies_before_hearing_its_token_join_answer_after_a_refusal_comes_back(
    cp: ControlPlaneProcess, tmp_path: Path
) -> None:
    """A stored credential the control plane refuses (its database was reset, say): the
    runner joins with its single-use token, proposing a credential it keeps beside the
    refused one, and is killed before it hears the answer. It used to come back with only
    the refused credential and a spent token, locked out for good. Now it tries what it
    proposed, which the control plane bound."""
    state = tmp_path / "alpha"
    stale = mint(SecretKind.RUNNER_CREDENTIAL).text
    save_credential(state, "alpha", stale)
    token = cp.create_join_token(max_uses=1)
    # The refusal is heard; the answer to the join, dialed once its proposal is stored, not.
    relay = AnswersLost(cp.target, lose_from=(state / PENDING_FILE).exists)
    join_unanswered_then_kill(cp, state, relay, token)
    assert load_credential(state, "alpha") == stale  # the refused one stays in place
    proposed = load_credential(state, "alpha", PENDING_FILE)
    assert proposed is not None and proposed != stale
    assert stat.S_IMODE((state / PENDING_FILE).stat().st_mode) == 0o600  # a secret
    [spent] = [t for t in tokens(cp).values() if t.max_uses == 1]
    assert spent.uses == 1
    admitted(cp, state, "alpha", token)
    assert load_credential(state, "alpha") == proposed
    assert not (state / PENDING_FILE).exists()  # removed when it registered
    assert next(t for t in tokens(cp).values() if t.max_uses == 1).uses == 1  # nothing spent
