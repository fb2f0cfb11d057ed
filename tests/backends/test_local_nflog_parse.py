"""Parsing what netfilter's log socket delivers (no root needed), hostile input included.

The bytes come from the kernel, but a parser that loops forever or raises on one odd message
would end the trail for every sandbox, so malformed and truncated messages are fed here.
The real socket is exercised by ``tests/e2e/test_connection_trail.py``.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from sandboxd.backends.local.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    parse_messages,
)

PACKET = NFNL_SUBSYS_ULOG << 8


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(*attrs: bytes, kind: int = PACKET) -> bytes:
    body = struct.pack("!BBH", 2, 0, 77) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def ipv4(protocol: int, destination: str, rest: bytes) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[9] = protocol
    header[12:16] = IPv4Address("10.213.0.2").packed
    header[16:20] = IPv4Address(destination).packed
    return bytes(header) + rest


def test_tcp_udp_and_icmp_packets() -> None:
    tcp = ipv4(6, "1.2.3.4", b"\x9c\x40\x01\xbb")
    udp = ipv4(17, "10.0.0.2", b"\x30\x39\x00\x35")
    icmp = ipv4(1, "9.9.9.9", b"\x08\x00")
    data = (
        message(attr(NFULA_PREFIX, b"sbx:t1:fwd\0"), attr(NFULA_PAYLOAD, tcp))
        + message(attr(NFULA_PAYLOAD, udp), attr(NFULA_PREFIX, b"sbx:t1:host\0"))
        + message(attr(NFULA_PREFIX, b"sbx:t2:fwd\0"), attr(NFULA_PAYLOAD, icmp))
    )
    packets = parse_messages(data)
    assert [(p.prefix, str(p.destination), p.protocol, p.port) for p in packets] == [
        ("sbx:t1:fwd", "1.2.3.4", "tcp", 443),
        ("sbx:t1:host", "10.0.0.2", "udp", 53),
        ("sbx:t2:fwd", "9.9.9.9", "icmp", 8),
    ]
    assert packets[0].source == IPv4Address("10.213.0.2")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\0" * 15,
        struct.pack("=IHHII", 0, PACKET, 0, 0, 0),  # a zero length must not loop forever
        struct.pack("=IHHII", 4096, PACKET, 0, 0, 0) + b"\0" * 8,  # longer than the read
        message(struct.pack("=HH", 0, NFULA_PAYLOAD)),  # a zero-length attribute
        message(struct.pack("=HH", 999, NFULA_PAYLOAD) + b"\0" * 8),  # past its message
        message(attr(NFULA_PAYLOAD, b"\x60" + b"\0" * 39)),  # IPv6: not ours
        message(attr(NFULA_PAYLOAD, b"\x45\0\0")),  # a truncated IPv4 header
        message(attr(NFULA_PAYLOAD, ipv4(6, "1.2.3.4", b"\x01"))),  # ports cut off
        message(attr(NFULA_PREFIX, b"\xff\xfe no nul")),  # not UTF-8, no terminator
        message(attr(NFULA_PAYLOAD, ipv4(6, "1.2.3.4", b"")), kind=PACKET | 1),  # a config
    ],
)
def test_malformed_messages_are_skipped_not_fatal(data: bytes) -> None:
    packets = parse_messages(data)
    for packet in packets:  # whatever survives is well formed
        assert packet.port == 0 and packet.protocol == "tcp"
