"""An idle operation pool ends when its session cancels it, whatever grpc does with the cancel.

grpc.aio answers a cancellation that lands while a call's ``read()`` is pending by ending the
call with CANCELLED and raising that, instead of CancelledError: the task's cancellation is
consumed. The pool used to take that for a failed call, sleep and open another one, forever,
so the runner's session never ended (CI hung 300 s in
``test_waits_for_a_control_plane_that_is_not_up_yet``). The call here is a stand-in that
does exactly what grpc does on cancel (a mock of grpc's behaviour, said so); the pool,
its slots and their tasks are the real ones.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from sandboxd.runner.operations import OperationPool


class CancelledIntoStatus:
    """An Operate call whose pending read() turns a cancellation into CANCELLED, like grpc."""

    def __init__(self, opened: list[CancelledIntoStatus]) -> None:
        opened.append(self)
        self.cancelled = False

    async def read(self) -> Any:
        try:
            await asyncio.Event().wait()  # no operation is ever bound
        except asyncio.CancelledError:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="Locally cancelled by application!",
            ) from None
        raise AssertionError("unreachable")

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_a_cancelled_pool_ends_though_grpc_consumed_the_cancellation() -> None:
    async def scenario() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never dialled: the stub is replaced
        try:
            pool = OperationPool(channel, "cred", 1, run=lambda _first, _call: asyncio.sleep(0))
            opened: list[CancelledIntoStatus] = []
            pool._stub.Operate = lambda **_kw: CancelledIntoStatus(opened)  # type: ignore[method-assign]
            serving = asyncio.create_task(pool.serve())
            async with asyncio.timeout(5):
                while len(opened) < 4:  # every idle slot is waiting on its call
                    await asyncio.sleep(0.01)
            serving.cancel()
            done, _ = await asyncio.wait({serving}, timeout=5)
            assert done, "the pool kept reopening calls after its session cancelled it"
            assert serving.cancelled()
            assert len(opened) == 4 and all(call.cancelled for call in opened)
        finally:
            await channel.close()

    asyncio.run(scenario())
