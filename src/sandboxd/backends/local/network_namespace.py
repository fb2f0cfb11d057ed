"""A sandbox's network namespace and veth, made (and removed) by system calls in threads.

Why a thread: a network namespace is per thread in Linux, so a thread can ``unshare`` one,
make the veth pair from inside it (the peer going to the runner's namespace), address it,
bring it up, add the default route, open the namespace, go back to the runner's namespace
to address the host end and bring it up, and end, while the event loop's thread stays
where it is. That is a few system calls instead of ``unshare`` and ``ip``
runs: a burst of 100 creates spent about 5 ms of CPU per create starting those two
programs through asyncio, more than the kernel's own work on the network.

Why a new thread each time rather than a pool's: a thread that has left the runner's
namespace must never run anything else, and ending it is the simplest proof. Its only
hold on the namespace afterwards is the returned descriptor: the namespace (and with it
both veth ends) dies with its last holder, also when the runner is killed.

A caller cancelled meanwhile waits for the thread (it cannot be stopped, and it takes a
millisecond or two), then the namespace is closed before the cancellation goes on, so the
caller's rollback never races what the thread makes (``host_commands._end`` holds the same
rule for commands). The veth's removal (:func:`remove_link`) runs in a new thread as well,
so that a burst of removals never occupies the loop's shared worker threads.

The threads are started with ``_thread.start_new_thread``, not ``threading.Thread.start``,
which waits until the new thread runs: the event loop stood still for it, 34 us at the
median and 0.4 ms at the 99th percentile on an idle host, and for about 80 ms of each burst
of 100 creates (py-spy of ``sandboxd up``: 5 % of its loop thread's samples). A burst's p99
did not change with it (paired, 20 bursts: 1.009): the host's CPUs are busy throughout one,
so the loop's waits were other processes' turns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from _thread import start_new_thread
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import netlink
from .host_commands import NetworkError
from .syscalls import CLONE_NEWNET, set_ipv4_address, set_link_up, setns, unshare

_THIS_THREADS = "/proc/thread-self/ns/net"
_running = 0
_running_lock = threading.Lock()


def running_threads() -> int:
    """How many threads of this module have not ended yet (tests look for leftovers)."""
    return _running


T = TypeVar("T")


@dataclass(frozen=True)
class VethPlan:
    """What a new namespace gets: its ``eth0``, and the veth's host end in the runner's.

    ``eth0`` has ``address``/``prefix_len`` and a default route via ``gateway``; the host
    end, ``host_if``, has ``gateway``/``prefix_len``. Both are up, without IPv6.
    """

    host_if: str
    address: str
    prefix_len: int
    gateway: str


async def new_network_namespace(plan: VethPlan) -> int:
    """A descriptor of a new network namespace, set up as ``plan`` says.

    Also the host end's part is done in the thread (back in the runner's namespace), not
    on the event loop's: each of its steps takes the kernel's network configuration lock
    (RTNL), which a burst of creates keeps busy, and the loop would wait for it. Never at a
    lowered CPU priority, also when made ahead of need: the thread
    holds the interpreter lock between its calls, and a niced thread preempted while
    holding it would stall the event loop for as long as it waits for the CPU (priority
    inversion); its work is 1-2 ms of CPU, most of it in the kernel.
    Raises ``NetworkError`` naming the host end when a step fails (``File exists`` when a
    link of that name is there already); nothing is then held.
    """
    made = _in_new_thread(lambda: _make(plan))
    try:
        return await asyncio.shield(made)
    except asyncio.CancelledError:
        while not made.done():  # the thread cannot be stopped: wait, then close its work
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(made)
        if not made.cancelled() and made.exception() is None:
            os.close(made.result())
        raise
    except OSError as exc:
        raise NetworkError(f"{plan.host_if}: {exc.strerror or exc}") from None


async def remove_link(name: str) -> bool:
    """Delete link ``name`` (a veth's host end takes the other end along); False if none.

    In a thread of its own too: the kernel may wait for its readers before it answers, and
    a burst of removals must not occupy the event loop's shared worker threads, which
    creates use. The removal goes on if the caller is cancelled meanwhile.
    """
    return await asyncio.shield(_in_new_thread(lambda: netlink.delete_link(name)))


def _in_new_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` in a new thread that ends with it; its outcome as a future of this loop."""
    global _running  # noqa: PLW0603 - one count per process, of threads that outlive calls
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        global _running  # noqa: PLW0603
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the waiting caller
            done.set_exception(exc)
        finally:
            with _running_lock:
                _running -= 1

    with _running_lock:
        _running += 1
    try:
        start_new_thread(run, ())  # without waiting for it to run (see the module)
    except BaseException:
        with _running_lock:
            _running -= 1
        raise
    return asyncio.wrap_future(done)


def _make(plan: VethPlan) -> int:
    """In this (new, short-lived) thread: leave for a new namespace, set it up, come back.

    IPv6 is switched off in the new namespace before any link in it is up, so ``eth0`` is
    made without it and ``lo`` never gets ``::1``: nothing to take down afterwards. Then,
    back in the runner's namespace, the host end gets its IPv6 switched off, its address,
    and comes up.
    """
    runner_ns = os.open(_THIS_THREADS, os.O_RDONLY | os.O_CLOEXEC)
    held = -1
    try:
        unshare(CLONE_NEWNET)  # this thread only: the rest of the process stays
        held = os.open(_THIS_THREADS, os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(held).st_ino == os.fstat(runner_ns).st_ino:
            raise OSError(0, "no new network namespace was made")
        for scope in ("default", "all"):  # links made from now on, and those there (lo)
            _disable_ipv6(scope)
        netlink.set_up_sandbox_link(
            plan.host_if, runner_ns, plan.address, plan.prefix_len, plan.gateway
        )
        setns(runner_ns, CLONE_NEWNET)
        _disable_ipv6(plan.host_if)
        set_ipv4_address(plan.host_if, plan.gateway, plan.prefix_len)  # while down: see there
        set_link_up(plan.host_if)
    except BaseException:
        if held >= 0:
            os.close(held)
        raise
    finally:
        os.close(runner_ns)
    return held


def _disable_ipv6(scope: str) -> None:
    """Switch IPv6 off for ``scope`` (a link, ``all`` or ``default``) in this thread's namespace.

    A kernel without IPv6 has no such file: nothing to switch off. Any other failure is
    raised: a sandbox network must not be handed out with IPv6 on, beside the IPv4 rules.
    """
    try:
        fd = os.open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
