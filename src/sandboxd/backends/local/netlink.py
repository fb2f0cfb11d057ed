"""The three rtnetlink requests a sandbox network needs: veth pair, default route, removal.

Why by hand rather than ``ip`` or a netlink library: each ``ip`` run on a create's path
was a process started through asyncio (a fork of the runner, an exec, pipes and a child
watcher: 3-5 ms of CPU, more on a busy host), and a burst of creates spent more of its CPU
starting ``unshare`` and ``ip`` than the kernel spent making their networks. A library
such as pyroute2 would do, but three fixed messages are a few dozen lines, and this module
(standard library only) adds nothing to the runner's imports.

Every request asks for an acknowledgement and waits for it, so a failure (a name that
exists, a gateway that is not reachable) is an ``OSError`` with the kernel's errno, here,
before anything else is made.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_DELLINK = 17
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
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
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


def _request(kind: int, flags: int, body: bytes) -> None:
    """Send one request in this thread's network namespace and wait for its acknowledgement.

    The socket is made here, so the request acts in the namespace of the calling thread
    (``network_namespace.py`` makes one in a thread of its own).
    """
    seq = next(_sequence)
    flags |= NLM_F_REQUEST | NLM_F_ACK
    message = _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0)
    kind_of_socket = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_NETLINK, kind_of_socket, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.sendall(message + body)
        while True:
            reply = sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(reply):
                length, rtype, _flags, rseq, _pid = _HEADER.unpack_from(reply, offset)
                if length < _HEADER.size:
                    raise OSError(errno.EPROTO, "malformed netlink reply")
                if rseq == seq and rtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + _HEADER.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                offset += (length + 3) & ~3


def add_veth(name: str, peer: str, peer_netns_fd: int) -> None:
    """A veth pair: ``name`` here, ``peer`` in the namespace ``peer_netns_fd`` refers to.

    Both down and without addresses. ``EEXIST`` if either name is taken (a host end left by
    a crash, or a duplicate): then nothing was made.
    """
    peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer))
    peer_info += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(
        IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info)
    )
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
    body += _attr(IFLA_LINKINFO, info)
    _request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def add_default_route(gateway: str) -> None:
    """``default via gateway`` in the main table (the gateway must be on a link that is up)."""
    body = _RTMSG.pack(
        socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
    )
    body += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
    _request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def delete_link(name: str) -> bool:
    """Delete link ``name`` (a veth takes its peer with it); False if there is none."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
    try:
        _request(RTM_DELLINK, 0, body)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    return True
