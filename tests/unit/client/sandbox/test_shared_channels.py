"""Sandbox handles share their gRPC channels (``_shared_channels.py``).

Runs against the in-process stand-in gateway (client-side unit tests only), which records
the client's end of the connection of every call: one peer means one channel.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest

from cwsandbox import Sandbox, _loop, _shared_channels
from cwsandbox._config import resolve_endpoint
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc as gw_grpc
from sandboxd_protocol.v1beta2 import streaming_pb2_grpc as st_grpc
from tests.unit.client.sandbox.gateway_standin import Gateway, StandInGateway, start_gateway


def peers(gateway: Gateway, method: str) -> set[str]:
    return {call.peer for call in gateway.servicer.recorded(method)}


def test_handles_one_after_another_use_one_connection(gateway: Gateway) -> None:
    for _ in range(3):
        sandbox = Sandbox.run()
        sandbox.exec(["true"]).result()
        sandbox.stop(graceful_shutdown_seconds=0).result()
    unary = peers(gateway, "Start") | peers(gateway, "Get") | peers(gateway, "Stop")
    streams = peers(gateway, "StreamExec")
    assert len(gateway.servicer.recorded("Start")) == 3
    assert len(unary) == 1, "each handle opened a unary channel of its own"
    assert len(streams) == 1, "each handle opened a streaming channel of its own"
    assert unary != streams, "execs must not share the unary calls' connection"


def test_concurrent_handles_share_too(gateway: Gateway) -> None:
    sandboxes = [Sandbox.run() for _ in range(5)]
    for sandbox in sandboxes:
        sandbox.exec(["true"]).result()
    for sandbox in sandboxes:
        sandbox.stop(graceful_shutdown_seconds=0).result()
    assert len(peers(gateway, "Start")) == 1
    assert len(peers(gateway, "StreamExec")) == 1


def test_each_control_plane_gets_its_own_channels(gateway: Gateway) -> None:
    server, other = start_gateway()
    try:
        Sandbox.run().stop(graceful_shutdown_seconds=0).result()
        Sandbox(base_url=other.url).start().result()
        assert len(gateway.servicer.recorded("Start")) == 1
        assert len(other.servicer.recorded("Start")) == 1
    finally:
        server.stop(grace=None)


def test_a_restarted_server_is_reached_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared channel broke with its server; the next handle must not fail fast on it."""
    first_server, first = start_gateway()
    port = int(first.url.rsplit(":", 1)[1])
    monkeypatch.setenv("CWSANDBOX_BASE_URL", first.url)
    monkeypatch.delenv("CWSANDBOX_API_KEY", raising=False)
    Sandbox.run().stop(graceful_shutdown_seconds=0).result()
    first_server.stop(grace=None).wait()
    with pytest.raises(Exception):  # noqa: B017 - any error: the server is down
        Sandbox.run(request_timeout_seconds=2)
    servicer = StandInGateway()
    second_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gw_grpc.add_GatewayServiceServicer_to_server(servicer, second_server)
    st_grpc.add_GatewayStreamingServiceServicer_to_server(servicer, second_server)
    if second_server.add_insecure_port(f"127.0.0.1:{port}") != port:
        pytest.skip("the port was taken by another process meanwhile")
    second_server.start()
    try:
        sandbox = Sandbox.run()
        sandbox.exec(["true"]).result()
        sandbox.stop(graceful_shutdown_seconds=0).result()
        assert len(servicer.requests("Start")) == 1
    finally:
        second_server.stop(grace=None)


def test_a_changed_ca_file_gets_another_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS trust is part of a channel: a new CA (file or contents) must not reuse the old one."""
    endpoint = resolve_endpoint("https://control-plane.invalid:8443")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"first CA")
    monkeypatch.setenv("CWSANDBOX_CA_FILE", str(ca))

    async def acquire() -> _shared_channels.SharedChannels:
        return _shared_channels.acquire(endpoint)

    def take() -> _shared_channels.SharedChannels:
        return _loop.submit(acquire()).result(timeout=10)

    first, again = take(), take()
    ca.write_bytes(b"second CA")
    changed = take()
    other = tmp_path / "other.pem"
    other.write_bytes(b"second CA")
    monkeypatch.setenv("CWSANDBOX_CA_FILE", str(other))
    moved = take()
    assert first is again
    assert changed is not first
    assert moved is not changed and moved is not first
    for entry in (first, again, changed, moved):
        _loop.loop().call_soon_threadsafe(entry.release)


def test_the_streaming_channel_has_a_fixed_window_and_the_unary_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC's bandwidth probes grew the streaming window on a busy host until gRPC held
    120-220 MiB of a 1 GiB ``read_file_streaming`` unread (CI: a 285 MiB client). The
    streaming channel fixes it; unary calls keep gRPC's defaults.

    The options are recorded on their way to gRPC (a stand-in for the channel factory):
    gRPC does not report a channel's arguments back, and the growth itself needs a loaded
    host to show (``tests/e2e``, ``test_one_gib_round_trip_in_constant_memory``).
    """
    made: dict[str, dict[str, object]] = {}

    def record(target: str, options: tuple[tuple[str, object], ...]) -> object:
        arguments = dict(options)
        made[str(arguments["cwsandbox.channel_role"])] = arguments
        return object()

    monkeypatch.setattr(_shared_channels.grpc.aio, "insecure_channel", record)
    endpoint = resolve_endpoint("http://127.0.0.1:9")
    _shared_channels._open(endpoint, "stream")
    _shared_channels._open(endpoint, "unary")
    window = _shared_channels.STREAM_WINDOW_BYTES
    assert made["stream"]["grpc.http2.bdp_probe"] == 0
    assert made["stream"]["grpc.http2.lookahead_bytes"] == window == 8 * 1024 * 1024
    assert "grpc.http2.bdp_probe" not in made["unary"]
    assert "grpc.http2.lookahead_bytes" not in made["unary"]
    # A long link may want a larger window, or gRPC's probes back (0).
    monkeypatch.setenv(_shared_channels.STREAM_WINDOW_ENV, "33554432")
    _shared_channels._open(endpoint, "stream")
    assert made["stream"]["grpc.http2.lookahead_bytes"] == 32 * 1024 * 1024
    monkeypatch.setenv(_shared_channels.STREAM_WINDOW_ENV, "0")
    _shared_channels._open(endpoint, "stream")
    assert "grpc.http2.bdp_probe" not in made["stream"]


@pytest.mark.parametrize("value", ["-1", "4k", "1000", "2147483648", "²", "1e6"])
def test_a_bad_stream_window_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(_shared_channels.STREAM_WINDOW_ENV, value)
    with pytest.raises(ValueError, match="CWSANDBOX_STREAM_WINDOW_BYTES") as caught:
        _shared_channels.stream_window_options()
    assert repr(value) in str(caught.value)
