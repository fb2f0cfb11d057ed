"""The rtnetlink requests of a sandbox network: its veth, address, links up, route; removal.

Why by hand rather than ``ip`` or a netlink library: each ``ip`` run on a create's path
was a process started through asyncio (a fork of the runner, an exec, pipes and a child
watcher: 3-5 ms of CPU, more on a busy host), and a burst of creates spent more of its CPU
starting ``unshare`` and ``ip`` than the kernel spent making their networks. A library
such as pyroute2 would do, but six fixed messages are a few dozen lines, and this module
(standard library only) adds nothing to the runner's imports.

The requests of a set go out in one write and each asks for an acknowledgement; the kernel
runs and answers them all, in order. The first that failed (a name that exists, a gateway
that is not reachable) is raised as an ``OSError`` with the kernel's errno; the caller then
discards the namespace, and with it whatever the rest of the set made.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable, Sequence

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
RTA_GATEWAY = 5
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
LOOPBACK_INDEX = 1
INSIDE_INDEX = 2
INSIDE_NAME = "eth0"
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_ATTR = struct.Struct("=HH")  # rtattr
_sequence = itertools.count(1)


def _attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to four bytes (its length counts the header, not the pad)."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > 15 or b"/" in raw or b"\0" in raw:  # IFNAMSIZ with the NUL
        raise ValueError(f"bad interface name {name!r}")
    return raw + b"\0"


def _requests(messages: Sequence[tuple[int, int, bytes]]) -> None:
    """Send requests in one write, in this thread's network namespace; wait for every ack.

    The socket is made here, so the requests act in the namespace of the calling thread
    (``network_namespace.py`` makes one in a thread of its own). The kernel runs them in
    order and answers each; the first that failed, in order, is raised as ``OSError``.
    One write and one socket for them all: each system call of a thread in this process
    may wait for the interpreter lock afterwards, which in a burst of creates meant
    milliseconds per call.
    """
    wire = bytearray()
    sequence: list[int] = []
    for kind, flags, body in messages:
        seq = next(_sequence)
        sequence.append(seq)
        asked = flags | NLM_F_REQUEST | NLM_F_ACK
        wire += _HEADER.pack(_HEADER.size + len(body), kind, asked, seq, 0) + body
    failed: dict[int, int] = {}
    pending = set(sequence)
    kind_of_socket = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, kind_of_socket, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.sendall(wire)
        while pending:
            reply = sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(reply):
                length, rtype, _flags, rseq, _pid = _HEADER.unpack_from(reply, offset)
                if length < _HEADER.size:
                    raise OSError(errno.EPROTO, "malformed netlink reply")
                if rseq in pending and rtype == NLMSG_ERROR:
                    pending.discard(rseq)
                    (code,) = struct.unpack_from("=i", reply, offset + _HEADER.size)
                    if code:
                        failed[rseq] = -code
                offset += (length + 3) & ~3
    for seq in sequence:
        if seq in failed:
            raise OSError(failed[seq], os.strerror(failed[seq]))


def _link(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(0, 0, index, flags, change)


def set_up_sandbox_link(
    host_if: str, runner_netns_fd: int, address: str, prefix_len: int, gateway: str
) -> None:
    """In the calling thread's new namespace: its end of a veth pair, up and routed.

    ``eth0`` (interface 2: ``lo`` is always 1 in a new namespace) with ``address``/
    ``prefix_len``, up, ``lo`` up, and a default route via ``gateway``; the other end,
    ``host_if``, in the namespace ``runner_netns_fd`` refers to, down and without an
    address. Five requests in one write. ``EEXIST`` if ``host_if`` is taken (a host end
    left by a crash, or a duplicate): then no veth was made. The caller discards the
    namespace on any error, and with it whatever of this was made.
    """
    peer = _link() + _attr(IFLA_IFNAME, _name(host_if))
    peer += _attr(IFLA_NET_NS_FD, struct.pack("=I", runner_netns_fd))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
    veth = _link(INSIDE_INDEX) + _attr(IFLA_IFNAME, _name(INSIDE_NAME)) + _attr(IFLA_LINKINFO, info)
    packed = socket.inet_aton(address)
    if not 0 < prefix_len <= 32:
        raise ValueError(f"bad prefix length {prefix_len}")
    addr = _IFADDR.pack(socket.AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE, INSIDE_INDEX)
    addr += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    route = _RTMSG.pack(
        socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
    )
    route += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
    made = NLM_F_CREATE | NLM_F_EXCL
    _requests(
        [
            (RTM_NEWLINK, made, veth),
            (RTM_NEWADDR, made, addr),
            (RTM_NEWLINK, 0, _link(INSIDE_INDEX, IFF_UP, IFF_UP)),
            (RTM_NEWLINK, 0, _link(LOOPBACK_INDEX, IFF_UP, IFF_UP)),
            (RTM_NEWROUTE, made, route),
        ]
    )


def delete_link(name: str) -> bool:
    """Delete link ``name`` (a veth takes its peer with it); False if there is none."""
    try:
        _requests([(RTM_DELLINK, 0, _link() + _attr(IFLA_IFNAME, _name(name)))])
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    return True


NETLINK_NETFILTER = 12
NFT_MSG_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
NFT_MSG_NEWGEN = (10 << 8) | 15
NFTA_GEN_ID = 1
_NFGENMSG = struct.Struct("!BBH")  # family, version, resource id (big-endian)
_GEN_TIMEOUT_SECONDS = 1.0


def nft_generation() -> int | None:
    """The nf_tables ruleset generation of this thread's network namespace; None if unknown.

    The kernel counts every committed change of the ruleset (``iptables-nft`` commits one
    per table of a transaction; a transaction that only checks changes nothing), so an
    unchanged number says that nothing changed any rule since it was read: one request of
    about 7 µs instead of reading the rules back. None where there is no nf_tables (an
    ``iptables-legacy`` host, or a kernel without it): the caller then has to look.
    """
    try:
        with socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        ) as sock:
            sock.settimeout(_GEN_TIMEOUT_SECONDS)
            seq = next(_sequence)
            body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
            sock.send(_HEADER.pack(_HEADER.size + len(body), NFT_MSG_GETGEN, NLM_F_REQUEST,
                                   seq, 0) + body)  # fmt: skip
            reply = sock.recv(65536)
    except OSError:
        return None
    if len(reply) < _HEADER.size + _NFGENMSG.size:
        return None
    length, kind, _flags, _seq, _pid = _HEADER.unpack_from(reply)
    if kind != NFT_MSG_NEWGEN:
        return None  # an error answer: no nf_tables here
    return _u32_attr(reply[_HEADER.size + _NFGENMSG.size : length], NFTA_GEN_ID)


SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFTA_GEN_PROC_PID = 2
SO_RCVBUFFORCE = 33  # not in Python's socket module
_MONITOR_BUFFER = 4 << 20


class RulesetChanges:
    """The kernel's notices of committed nf_tables changes, and which process made each.

    Every commit ends with a new-generation notice naming the committing process
    (``NFTA_GEN_PROC_PID``, its pid in the first pid namespace). :meth:`drain` reads what
    queued and says whether any commit came from a process the caller does not know as
    its own, or whether notices were lost (the queue overflowed: anything may have
    happened). Non-blocking; the caller watches :meth:`fileno` for readability.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
        try:
            self._sock.bind((0, 0))
            with contextlib.suppress(OSError):  # the default size only costs lost notices
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _MONITOR_BUFFER)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except OSError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """The socket to watch for readability."""
        return self._sock.fileno()

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()

    def drain(self, ours: Callable[[int], bool]) -> bool:
        """Read every queued notice; True if a commit was not ``ours`` (by pid) or lost."""
        foreign = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return foreign
            except OSError:  # ENOBUFS: notices were dropped
                foreign = True
                continue
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return True  # not a notice we can read: assume the worst
                if kind == NFT_MSG_NEWGEN:
                    attrs = data[offset + _HEADER.size + _NFGENMSG.size : offset + length]
                    pid = _u32_attr(attrs, NFTA_GEN_PROC_PID)
                    foreign = foreign or pid is None or not ours(pid)
                offset += (length + 3) & ~3


def _u32_attr(attrs: bytes, wanted: int) -> int | None:
    """The big-endian 32-bit attribute ``wanted`` of netfilter attributes (None if absent)."""
    offset = 0
    while offset + _ATTR.size <= len(attrs):
        size, attr = _ATTR.unpack_from(attrs, offset)
        if size < _ATTR.size:
            return None
        if attr & 0x7FFF == wanted and size >= _ATTR.size + 4:
            return int(struct.unpack_from(">I", attrs, offset + _ATTR.size)[0])
        offset += (size + 3) & ~3
    return None
