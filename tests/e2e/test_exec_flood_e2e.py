"""A flood of concurrent execs into one sandbox hits the runner's cap; its neighbour is fine.

A real ``sandboxd controlplane`` and a real ``sandboxd runner`` (local backend, root) with
``SANDBOXD_MAX_EXECS_PER_SANDBOX=8``. Sandbox A gets 40 execs at once, each holding its slot
for a while: exactly 8 run, the other 32 end with the in-band ``EXEC_LIMIT_EXCEEDED`` error
naming the limit (no other failure). Meanwhile execs into sandbox B on the same runner keep
succeeding, and afterwards A runs commands again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from sandboxd.images import ImageStore, build_python_image
from sandboxd_protocol.v1beta2 import gateway_pb2 as g
from sandboxd_protocol.v1beta2 import gateway_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from tests.support.processes import ControlPlaneProcess, RunnerProcess

CAP = 8
FLOOD = 40


@dataclass
class Cluster:
    gateway: gateway_pb2_grpc.GatewayServiceStub
    streaming: streaming_pb2_grpc.GatewayStreamingServiceStub
    sandboxes: list[str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for the local backend")
    base = tmp_path_factory.mktemp("flood")
    build_python_image(ImageStore(base / "runner"), progress=lambda _line: None)
    cp = ControlPlaneProcess(base / "cp").start()
    runner = RunnerProcess(
        cp,
        base / "runner",
        runner_id="flood",
        extra_env={"SANDBOXD_MAX_EXECS_PER_SANDBOX": str(CAP)},
    ).start()
    channel = cp.channel()  # authenticated with the control plane's administrator key
    cluster = Cluster(
        gateway_pb2_grpc.GatewayServiceStub(channel),
        streaming_pb2_grpc.GatewayStreamingServiceStub(channel),
        [],
    )
    try:
        with cp.discovery() as discovery:
            discovery.wait_for("flood", healthy=True, timeout=60)
        yield cluster
    finally:
        for sid in cluster.sandboxes:  # sandboxes outlive their runner: delete them first
            cluster.gateway.Delete(g.DeleteSandboxRequest(sandbox_id=sid), timeout=60)
        channel.close()
        runner.stop()
        cp.stop()


def started(cluster: Cluster) -> str:
    response = cluster.gateway.Start(
        g.StartSandboxRequest(
            command="sh",
            args=["-c", 'trap "exit 0" TERM; sleep infinity & wait'],
            profile_names=["locked-down"],
        ),
        timeout=60,
    )
    cluster.sandboxes.append(response.sandbox_id)
    deadline = time.monotonic() + 60
    while (
        cluster.gateway.Get(
            g.GetSandboxRequest(sandbox_id=response.sandbox_id), timeout=10
        ).sandbox_status
        != g.SANDBOX_STATUS_RUNNING
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return response.sandbox_id


def run_exec(cluster: Cluster, sandbox_id: str, *argv: str) -> tuple[str, bytes, str]:
    """("exit", stdout, code) or ("error", b"", code + message) of one exec."""
    init = streaming_pb2.ExecStreamInit(sandbox_id=sandbox_id, command=argv)
    out = b""
    for frame in cluster.streaming.StreamExec(
        iter([streaming_pb2.ExecStreamRequest(init=init)]), timeout=60
    ):
        kind = frame.WhichOneof("response")
        if kind == "output":
            out += frame.output.data
        elif kind == "exit":
            return "exit", out, str(frame.exit.exit_code)
        elif kind == "error":
            return "error", b"", f"{frame.error.code}: {frame.error.message}"
    return "end", out, ""


def test_flood_hits_the_cap_cleanly_and_the_neighbour_keeps_working(cluster: Cluster) -> None:
    a, b = started(cluster), started(cluster)
    flooding = threading.Event()
    neighbour: list[tuple[str, bytes, str]] = []

    def keep_using_b() -> None:
        while flooding.is_set():
            neighbour.append(run_exec(cluster, b, "echo", "b"))

    flooding.set()
    prober = threading.Thread(target=keep_using_b)
    prober.start()
    try:
        with ThreadPoolExecutor(FLOOD) as pool:
            results = list(pool.map(lambda _i: run_exec(cluster, a, "sleep", "3"), range(FLOOD)))
    finally:
        flooding.clear()
        prober.join(60)
    ran = [r for r in results if r[0] == "exit"]
    refused = [r for r in results if r[0] == "error"]
    assert len(ran) == CAP and all(r[2] == "0" for r in ran), results
    assert len(refused) == FLOOD - CAP, results
    for _kind, _out, why in refused:
        assert why.startswith("EXEC_LIMIT_EXCEEDED: ") and f"max_execs_per_sandbox={CAP}" in why
    assert len(neighbour) >= 3, neighbour  # B answered all along the 3 s flood
    assert all(r == ("exit", b"b\n", "0") for r in neighbour), neighbour
    assert run_exec(cluster, a, "echo", "a") == ("exit", b"a\n", "0")  # slots came back
