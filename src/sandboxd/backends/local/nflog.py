"""Packets the kernel logs to an NFLOG group, read straight from netfilter's netlink socket.

Why by hand: the sandbox's outbound connection attempts are logged by ``-j NFLOG`` rules in
its egress chain, and reading them needs only two netlink messages (bind a group, ask for
the first bytes of each packet) and one to parse. The Python bindings on PyPI wrap
``libnetfilter_log`` and are unmaintained; pyroute2 has no NFLOG support. The kernel side
is a stable ABI (``include/uapi/linux/netfilter/nfnetlink_log.h``), so the constants below
are the whole dependency.

Only one socket may bind a group: a second binder is refused (``EPERM``), which
:class:`NflogReader` reports as :class:`NflogUnavailable` so that the caller can leave its
rules without NFLOG (never send its sandboxes' packets to somebody else's group).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from .netlink import NETLINK_NETFILTER, SO_RCVBUFFORCE

__all__ = ["LoggedPacket", "NflogReader", "NflogUnavailable", "parse_messages"]

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_TIMESTAMP = 3
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLA_TYPE_MASK = 0x3FFF
COPY_BYTES = 64
"""Enough for an IPv4 header with options (60) and the ports that follow it."""
RECEIVE_BUFFER = 4 << 20

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_NLATTR = struct.Struct("=HH")


class NflogUnavailable(OSError):
    """The group cannot be read here (no ``nfnetlink_log``, not root, or another owner)."""


@dataclass(frozen=True)
class LoggedPacket:
    """What one logged packet tells: who it came from, where it went, and which rule logged it."""

    prefix: str
    source: IPv4Address
    destination: IPv4Address
    protocol: str
    port: int
    """Destination port for TCP and UDP, the ICMP type for ICMP, else 0."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _config(group: int, attrs: bytes, seq: int) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, group) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}


def _packet(payload: bytes, prefix: str) -> LoggedPacket | None:
    """The addresses and destination port of an IPv4 packet's first bytes (None if not IPv4)."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    header = (payload[0] & 0x0F) * 4
    number = payload[9]
    protocol = _PROTOCOLS.get(number, str(number))
    port = 0
    if number in (6, 17) and len(payload) >= header + 4:
        port = int.from_bytes(payload[header + 2 : header + 4], "big")
    elif number == 1 and len(payload) > header:
        port = payload[header]
    return LoggedPacket(
        prefix, IPv4Address(payload[12:16]), IPv4Address(payload[16:20]), protocol, port
    )


def parse_messages(data: bytes) -> list[LoggedPacket]:
    """Every IPv4 packet in one read from the socket (other messages are skipped)."""
    packets: list[LoggedPacket] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            prefix, payload = "", b""
            at = offset + _NLMSGHDR.size + _NFGENMSG.size
            end = offset + length
            while at + _NLATTR.size <= end:
                size, attr = _NLATTR.unpack_from(data, at)
                if size < _NLATTR.size or at + size > end:
                    break
                value = data[at + _NLATTR.size : at + size]
                if attr & NLA_TYPE_MASK == NFULA_PREFIX:
                    prefix = value.split(b"\0", 1)[0].decode(errors="replace")
                elif attr & NLA_TYPE_MASK == NFULA_PAYLOAD:
                    payload = value
                at += _align(size)
            packet = _packet(payload, prefix)
            if packet is not None:
                packets.append(packet)
        offset += _align(length)
    return packets


class NflogReader:
    """Owns one NFLOG group and hands each logged packet to ``deliver`` on the event loop.

    ``lost`` counts packets the kernel dropped because we read too slowly (``ENOBUFS``): a
    flood is summarized, never queued without bound.
    """

    def __init__(self, group: int, deliver: Callable[[LoggedPacket], None]) -> None:
        self.group = group
        self.lost = 0
        self._deliver = deliver
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Bind the group (raises :class:`NflogUnavailable`) and start reading."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as error:
            raise NflogUnavailable(f"netfilter netlink socket: {error.strerror}") from error
        try:
            sock.bind((0, 0))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            self._request(sock, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), 1)
            mode = struct.pack("!IBB", COPY_BYTES, NFULNL_COPY_PACKET, 0)
            self._request(sock, _attr(NFULA_CFG_MODE, mode), 2)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise NflogUnavailable(f"NFLOG group {self.group}: {error.strerror}") from error
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read)

    def _request(self, sock: socket.socket, attrs: bytes, seq: int) -> None:
        """Send one config message and wait for its acknowledgement (errors raise)."""
        sock.settimeout(2.0)
        sock.send(_config(self.group, attrs, seq))
        while True:
            reply = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(reply):
                length, kind, _f, got_seq, _p = _NLMSGHDR.unpack_from(reply, offset)
                if kind == NLMSG_ERROR and got_seq == seq:
                    (code,) = struct.unpack_from("=i", reply, offset + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                offset += _align(max(length, _NLMSGHDR.size))

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(64):  # a bounded batch per wakeup, so a flood cannot starve the loop
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                return
            for packet in parse_messages(data):
                self._deliver(packet)

    def close(self) -> None:
        """Stop reading; the kernel unbinds the group when the socket closes."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()
