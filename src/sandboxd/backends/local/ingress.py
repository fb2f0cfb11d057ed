"""Publishing a sandbox's exposed ports on the host, with a small TCP relay in the runner.

Why a userspace relay instead of DNAT: it works for every egress type, including ``none``,
where the sandbox has no veth at all; it needs no ``route_localnet`` tweak to serve
``127.0.0.1``; and it leaves no iptables state behind. For each accepted connection the
relay creates its socket *inside* the sandbox's network namespace (a ``setns`` of the
calling thread, undone right after ``socket()``; a socket keeps the namespace it was created
in) and connects to ``127.0.0.1:<container_port>`` there, so a server bound to loopback in
the sandbox is reachable too. ``public`` binds every interface, ``internal`` host loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from ..base import IngressMode, PublishedPort
from .syscalls import CLONE_NEWNET, setns


def socket_in_netns(netns_fd: int) -> socket.socket:
    """A TCP socket created inside the network namespace ``netns_fd``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd, CLONE_NEWNET)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class PortPublisher:
    """The listeners of one sandbox; ``close()`` stops them and their connections."""

    def __init__(self, netns_fd: int) -> None:
        self.netns_fd = netns_fd
        self.servers: list[asyncio.Server] = []
        self.ports: list[PublishedPort] = []
        self._conns: set[asyncio.Task[None]] = set()

    async def publish(
        self, ports: tuple[int, ...], mode: IngressMode, host_ports: dict[int, int] | None = None
    ) -> list[PublishedPort]:
        """Listen for each container port; reuse ``host_ports`` when given (after recovery)."""
        host_ip = "0.0.0.0" if mode is IngressMode.PUBLIC else "127.0.0.1"
        for port in ports:
            wanted = (host_ports or {}).get(port, 0)
            server = await self._listen(host_ip, wanted, port)
            bound = server.sockets[0].getsockname()[1]
            self.servers.append(server)
            self.ports.append(PublishedPort(port, host_ip, bound))
        return self.ports

    async def _listen(self, host_ip: str, host_port: int, port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self._relay(reader, writer, port)
            finally:
                self._conns.discard(task)
                writer.close()

        try:
            return await asyncio.start_server(handle, host_ip, host_port)
        except OSError:
            if not host_port:
                raise
            return await asyncio.start_server(handle, host_ip, 0)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        sock = socket_in_netns(self.netns_fd)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
        except (TimeoutError, OSError):
            sock.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def close(self) -> None:
        """Stop listening and drop open relays."""
        for server in self.servers:
            server.close()
        for task in list(self._conns):
            task.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self.servers.clear()
        with contextlib.suppress(OSError):
            os.close(self.netns_fd)
