"""Many lightweight runner connections in one process, for the discovery benchmark.

Each simulated runner is a real RunnerService.Connect stream that registers with synthetic
capabilities and heartbeats; it runs no sandboxes. Like a real runner it joins once with the
join token ($SANDBOXD_JOIN_TOKEN, a many-use token) and redials with the credential it was
issued. Run by bench/discovery.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import grpc

from sandboxd_protocol.sandboxd_v1 import runner_pb2, runner_pb2_grpc


def register_message(index: int, groups: int) -> runner_pb2.RunnerMessage:
    gpus = 8 if index % 10 == 0 else 0
    caps = runner_pb2.Capabilities(
        cpu_millicores=64_000,
        memory_bytes=512 * 2**30,
        gpu_count=gpus,
        gpu_types=["H100"] if gpus else [],
        architectures=["arm64" if index % 4 == 0 else "amd64"],
        hostname=f"host-{index}",
        backends=["local"],
    )
    return runner_pb2.RunnerMessage(
        register=runner_pb2.Register(
            runner_id=f"bench-{index:05d}",
            runner_group_id=f"group-{index % groups:03d}",
            tags=["bench"],
            capabilities=caps,
            version="bench",
            resources=runner_pb2.Resources(
                available_cpu_millicores=caps.cpu_millicores,
                available_memory_bytes=caps.memory_bytes,
                available_gpu_count=gpus,
            ),
        )
    )


async def one_runner(
    stub: runner_pb2_grpc.RunnerServiceStub, index: int, token: str, groups: int, interval: float
) -> None:
    first = register_message(index, groups)
    secret = token
    heartbeat = runner_pb2.RunnerMessage(
        heartbeat=runner_pb2.Heartbeat(resources=first.register.resources)
    )

    async def requests():  # type: ignore[no-untyped-def]
        yield first
        await asyncio.sleep(interval * (index % 100) / 100)  # spread heartbeats out
        while True:
            yield heartbeat
            await asyncio.sleep(interval)

    while True:  # like a real runner: redial when the stream ends
        try:
            metadata = (("authorization", f"Bearer {secret}"),)
            async for message in stub.Connect(requests(), metadata=metadata):
                if message.WhichOneof("message") == "registered" and message.registered.credential:
                    secret = message.registered.credential
        except grpc.aio.AioRpcError as error:
            ERRORS[error.code().name] = ERRORS.get(error.code().name, 0) + 1
        await asyncio.sleep(1.0)


ERRORS: dict[str, int] = {}


async def main(target: str, count: int, token: str, groups: int, interval: float) -> None:
    # Servers allow about 100 concurrent streams per HTTP/2 connection: give every 50 runners
    # a connection of their own (a local subchannel pool stops channels from sharing one).
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, count // 50))
    ]
    stubs = [runner_pb2_grpc.RunnerServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
    tasks = [
        asyncio.create_task(one_runner(stubs[i % len(stubs)], i, token, groups, interval))
        for i in range(count)
    ]
    print("swarm started", flush=True)
    while True:
        await asyncio.sleep(5)
        if ERRORS:
            print("stream errors so far:", ERRORS, flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    args = parser.parse_args()
    token = os.environ["SANDBOXD_JOIN_TOKEN"]
    asyncio.run(main(args.target, args.count, token, args.groups, args.heartbeat_interval))
