"""The loopback ports tests hand their servers never come from the kernel's ephemeral range.

CI once failed because a server's port, learned by binding port 0, was taken by some client's
outgoing connection before the server bound it. These checks keep ``tests.support.ports`` from
sliding back into that range.
"""

from __future__ import annotations

import socket

from tests.support.ports import _ephemeral_start, _worker_slice, free_port


def test_ports_lie_below_the_ephemeral_range_in_this_workers_slice() -> None:
    ports = [free_port() for _ in range(20)]
    assert all(port < _ephemeral_start() for port in ports)
    assert all(port in _worker_slice() for port in ports)


def test_a_port_is_not_handed_out_twice_in_a_row_and_is_bindable() -> None:
    first, second = free_port(), free_port()
    assert first != second
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", second))


def test_a_port_in_use_is_skipped() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        handed = [free_port() for _ in range(1_000)]
    assert taken not in handed
