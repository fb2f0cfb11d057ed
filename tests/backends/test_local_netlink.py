"""The netlink requests and the namespace thread of sandbox networks, against the real kernel.

Each test works in a network namespace of its own (``unshare --net`` around a child
Python), so nothing here touches the host's links.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from sandboxd.backends.local import netlink
from tests.support.host_network import in_own_network_namespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _in_own_netns(script: str) -> str:
    """Run ``script`` in a fresh network namespace; its output (it must exit 0)."""
    return in_own_network_namespace(textwrap.dedent(script), timeout=60)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a\0b"])
def test_a_bad_interface_name_is_refused_before_anything_is_sent(name: str) -> None:
    with pytest.raises(ValueError, match="bad interface name"):
        netlink.delete_link(name)
    with pytest.raises(ValueError, match="bad interface name"):
        netlink.set_up_sandbox_link(name, 0, "10.99.2.2", 30, "10.99.2.1")


def test_the_namespace_thread_builds_the_network_and_leaves_the_runner_where_it_was() -> None:
    """eth0 with its address and default route inside, IPv6 off there from the start; the
    host end here, addressed and up, without IPv6; a clash is EEXIST with nothing made;
    the runner's thread never left its namespace; removal is idempotent."""
    out = _in_own_netns(
        """
        import asyncio, os, subprocess, time
        from sandboxd.backends.local import netlink
        from sandboxd.backends.local.network import NetworkError
        from sandboxd.backends.local.network_namespace import (
            VethPlan, new_network_namespace, running_threads,
        )

        def ip(*argv, ns=None):
            enter = ["nsenter", f"--net=/proc/self/fd/{ns}"] if ns is not None else []
            return subprocess.run([*enter, "ip", *argv], capture_output=True, text=True,
                                  pass_fds=(ns,) if ns is not None else ()).stdout

        before = os.stat("/proc/thread-self/ns/net").st_ino
        plan = VethPlan("sbxtest0", "10.99.0.2", 30, "10.99.0.1")
        fd = asyncio.run(new_network_namespace(plan))
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert os.fstat(fd).st_ino != before
        inside = ip("-o", "-4", "addr", ns=fd)
        assert "eth0" in inside and "10.99.0.2/30" in inside, inside
        links = ip("-o", "link", ns=fd)
        assert "lo: <LOOPBACK,UP" in links and "eth0@" in links, links
        assert "sbxtest0" not in links
        host_end = ip("-o", "addr", "show", "sbxtest0")
        assert "10.99.0.1/30" in host_end and "inet6" not in host_end, host_end
        assert ",UP," in ip("-o", "link", "show", "sbxtest0")  # IFF_UP set
        assert "default via 10.99.0.1 dev eth0" in ip("route", ns=fd)
        # IPv6 is off inside before any link came up: no address at all, not even ::1
        assert ip("-6", "addr", ns=fd) == "", ip("-6", "addr", ns=fd)
        for scope in ("all", "default", "eth0", "lo"):
            conf = f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"
            assert subprocess.run(["nsenter", f"--net=/proc/self/fd/{fd}", "cat", conf],
                                  capture_output=True, text=True, pass_fds=(fd,)).stdout == "1\\n"
        with open("/proc/sys/net/ipv6/conf/sbxtest0/disable_ipv6") as host_conf:
            assert host_conf.read() == "1\\n"
        with open("/proc/sys/net/ipv6/conf/default/disable_ipv6") as runner_default:
            assert runner_default.read() == "0\\n"  # the runner's own namespace is untouched

        try:
            asyncio.run(new_network_namespace(plan))
        except NetworkError as exc:
            assert "sbxtest0" in str(exc) and "File exists" in str(exc), exc
        else:
            raise AssertionError("a second veth of the same name was made")
        deadline = time.monotonic() + 10  # its threads end right after their answer
        while running_threads():
            assert time.monotonic() < deadline, "a network thread did not end"
            time.sleep(0.01)

        assert netlink.delete_link("sbxtest0") is True
        assert ip("-o", "link", "show", "sbxtest0") == ""
        assert "eth0" not in ip("-o", "link", ns=fd)  # the peer went with it
        assert netlink.delete_link("sbxtest0") is False
        os.close(fd)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_gateway_outside_every_subnet_fails_and_holds_no_namespace() -> None:
    """A step that fails after the namespace exists (here the route) closes it: no
    descriptor is handed out, and the veth dies with the namespace."""
    out = _in_own_netns(
        """
        import asyncio, os, subprocess, time
        from sandboxd.backends.local.network import NetworkError
        from sandboxd.backends.local.network_namespace import VethPlan, new_network_namespace

        opened = len(os.listdir("/proc/self/fd"))
        plan = VethPlan("sbxtest1", "10.99.1.2", 30, "192.0.2.1")
        try:
            asyncio.run(new_network_namespace(plan))
        except NetworkError as exc:
            assert "sbxtest1" in str(exc), exc
        else:
            raise AssertionError("a route via an unreachable gateway was added")
        assert len(os.listdir("/proc/self/fd")) == opened
        deadline = time.monotonic() + 20
        while subprocess.run(["ip", "-o", "link", "show", "sbxtest1"],
                             capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "the veth outlived its namespace"
            time.sleep(0.05)
        print("ok")
        """
    )
    assert out.strip() == "ok"
