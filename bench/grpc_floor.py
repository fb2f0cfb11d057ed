"""The gRPC transport floor: what a Start and an exec cost with nothing behind them.

Why: every create → first exec through the platform is two calls (a unary Start and a
StreamExec), made with Python's gRPC ``aio`` on both ends. On a small host that transport
alone is a large part of the warm-pool target (p50 ≤ 6 ms), so the sandbox benchmark prints
it beside the rows it bounds: the same two calls, from a ``grpc.aio`` client on its own
event loop thread (as our client makes them), to a ``grpc.aio`` server in another process
that answers at once — no interceptors, no database, no runner, no sandbox.

Run alone: ``.venv/bin/python bench/grpc_floor.py [--iterations 300]``; the sandbox
benchmark calls :func:`measure`. ``--serve`` is the server half (a child process, which
says the port it bound).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

# Before grpc: the transport the client and the server choose (cwsandbox/_grpc_transport.py),
# so that the floor runs on the same one as the platform.
import cwsandbox  # noqa: F401  # isort: skip
import grpc
import grpc.aio

from sandboxd_protocol.v1beta2 import (
    gateway_pb2,
    gateway_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
)

_START = "/coreweave.sandbox.v1beta2.GatewayService/Start"
_EXEC = "/coreweave.sandbox.v1beta2.GatewayStreamingService/StreamExec"


class _Gateway(gateway_pb2_grpc.GatewayServiceServicer):
    async def Start(
        self, request: gateway_pb2.StartSandboxRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.StartSandboxResponse:
        return gateway_pb2.StartSandboxResponse(sandbox_id="floor")


class _Streaming(streaming_pb2_grpc.GatewayStreamingServiceServicer):
    async def StreamExec(
        self,
        request_iterator: AsyncIterator[streaming_pb2.ExecStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[streaming_pb2.ExecStreamResponse]:
        async for _ in request_iterator:
            break  # the init frame: answer as if the command exited at once
        yield streaming_pb2.ExecStreamResponse(exit=streaming_pb2.ExecStreamExit(exit_code=0))


async def _serve() -> None:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(_Gateway(), server)
    streaming_pb2_grpc.add_GatewayStreamingServiceServicer_to_server(_Streaming(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"ready {port}", flush=True)
    await server.wait_for_termination()


async def _round_trips(port: int, iterations: int) -> tuple[list[float], list[float]]:
    """Seconds per Start and per StreamExec (one init frame, read to the exit frame)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        start = channel.unary_unary(
            _START,
            request_serializer=gateway_pb2.StartSandboxRequest.SerializeToString,
            response_deserializer=gateway_pb2.StartSandboxResponse.FromString,
        )
        # As our client sends an exec without stdin: init and half-close in one batch.
        stream = channel.unary_stream(
            _EXEC,
            request_serializer=streaming_pb2.ExecStreamRequest.SerializeToString,
            response_deserializer=streaming_pb2.ExecStreamResponse.FromString,
        )
        request = gateway_pb2.StartSandboxRequest(container_image="python:3.11")
        init = streaming_pb2.ExecStreamRequest(
            init=streaming_pb2.ExecStreamInit(sandbox_id="floor", command=["true"])
        )
        starts: list[float] = []
        execs: list[float] = []
        for _ in range(iterations):
            began = time.perf_counter()
            await start(request)
            starts.append(time.perf_counter() - began)
            began = time.perf_counter()
            async for _ in stream(init):
                pass
            execs.append(time.perf_counter() - began)
        return starts, execs


def measure(iterations: int) -> tuple[list[float], list[float]]:
    """Start and exec round trips (seconds) against a bare server in a child process."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        said = server.stdout.readline().split()  # "ready PORT", the port it bound
        if len(said) != 2 or said[0] != "ready":
            raise RuntimeError("the bare gRPC server did not start")
        return asyncio.run(_round_trips(int(said[1]), iterations))
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    starts, execs = measure(args.iterations)
    for name, samples in (("Start (unary)", starts), ("StreamExec (one exit frame)", execs)):
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
        print(f"{name:<30} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")


if __name__ == "__main__":
    main()
