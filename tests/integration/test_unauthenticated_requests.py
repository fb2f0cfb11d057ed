"""Strangers cannot make the control plane buffer their requests.

A call without a valid credential is refused before its request is read (the interceptor
answers with a handler that never reads), so even many 95 MiB requests in a row, four at a
time, leave the server's memory where it was. Before, each such request was read and decoded
in full, and 1 GiB stayed resident.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2
from tests.support.processes import ControlPlaneProcess, keyed_channel

MIB = 1024 * 1024
PAYLOAD = 95 * MIB
ROUNDS = 6
AT_ONCE = 4
OPTIONS = [("grpc.max_send_message_length", 100 * MIB)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """Samples a process's resident memory every 10 ms; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mib(self._pid))

    def reset(self) -> float:
        self.peak = rss_mib(self._pid)
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    control_plane = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    yield control_plane
    control_plane.stop()


def test_many_huge_unauthenticated_requests_leave_memory_bounded(cp: ControlPlaneProcess) -> None:
    assert cp.proc is not None
    pid = cp.proc.popen.pid
    big_file = gateway_pb2.AddFileSandboxRequest(
        sandbox_id="sb-x", filepath="/big", file_contents=b"\x00" * PAYLOAD
    ).SerializeToString()
    big_register = runner_pb2.RunnerMessage(
        register=runner_pb2.Register(runner_id="x", tags=["t" * PAYLOAD])
    ).SerializeToString()
    identity = lambda raw: raw  # noqa: E731  # send pre-serialized bytes as they are
    codes: list[grpc.StatusCode] = []
    with (
        keyed_channel(cp.target, None, options=OPTIONS) as channel,
        ThreadPoolExecutor(AT_ONCE) as pool,
    ):
        add_file = channel.unary_unary(
            "/coreweave.sandbox.v1beta2.GatewayService/AddFile",
            request_serializer=identity,
            response_deserializer=identity,
        )
        connect = channel.stream_stream(
            "/sandboxd.runner.v1.RunnerService/Connect",
            request_serializer=identity,
            response_deserializer=identity,
        )

        def one(index: int) -> grpc.StatusCode:
            try:
                if index % 2:
                    add_file(big_file, timeout=60, metadata=[("authorization", "Bearer forged")])
                else:
                    list(connect(iter([big_register]), timeout=60))
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return,attr-defined]
            return grpc.StatusCode.OK

        one(1)  # let the server reach its steady state
        memory = PeakRss(pid)
        try:
            baseline = memory.reset()
            peaks = []
            for _ in range(ROUNDS):  # peaks are sampled while the requests are in flight
                codes += pool.map(one, range(AT_ONCE))
                peaks.append(memory.peak)
        finally:
            memory.close()
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}, codes
    # Reading even one round's requests would take 4 x 95 MiB; refusing them takes at most a
    # few flow-control windows, and nothing accumulates from round to round.
    print(f"server RSS: {baseline:.0f} MiB before, peaks {[round(p) for p in peaks]} MiB")
    assert max(peaks) - baseline < 160, (baseline, peaks)
    assert peaks[-1] - peaks[1] < 48, peaks
    # And the server is fine: an authenticated caller is served at once.
    with cp.discovery() as client:
        assert client.list_runners().runners == []
