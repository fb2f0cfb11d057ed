"""Each session's channel has a connection of its own (``runner/stream.py``).

gRPC shares connections between channels of the same target and options by default, so a
runner's redial could go out on the last session's connection, still open while its channel
closes: not the clean start a redial is for. A test relay that loses the answers of every
connection after the first (``test_runner_credentials.py``) saw a token join's answer
arrive through the refused session's connection about once in ten runs.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from sandboxd.runner.settings import ControlPlaneAddress
from sandboxd.runner.stream import open_channel


def test_a_second_channel_opens_its_own_connection_while_the_first_is_open() -> None:
    accepted: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()

    async def scenario() -> None:
        address = ControlPlaneAddress(target=f"127.0.0.1:{port}", secure=False)
        first, second = open_channel(address), open_channel(address)
        try:
            for channel in (first, second):
                channel.get_state(try_to_connect=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while len(accepted) < 2:  # nothing answers HTTP/2 here: each only connects
                assert loop.time() < deadline, f"{len(accepted)} connection(s) for two channels"
                await asyncio.sleep(0.02)
        finally:
            await first.close(None)
            await second.close(None)

    try:
        asyncio.run(scenario())
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) >= 2
