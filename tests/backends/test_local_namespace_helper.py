"""The native namespace helper (``sandboxd-keeper unshare``) that replaced the zygote's forks.

The zygote makes a user namespace for every sandbox and, for sandboxes without a network, an
empty network namespace; each needs a process to unshare it. These tests run the real
program from its sealed copy, as the zygote does, and check what the namespaces are (their
id maps, seen from inside), that the helper holds nothing of its parent's, that it refuses
anything but the two kinds and malformed descriptors, and that it never outlives its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.backends.local import syscalls, userns
from sandboxd.backends.local.keeper import NATIVE_KEEPER, load_native_keeper

FIRST_ID = 1 << 30


@pytest.fixture
def helper() -> Iterator[int]:
    """The sealed, executable copy of ``sandboxd-keeper`` the zygote holds."""
    if os.geteuid() != 0:
        pytest.skip("needs root: user and network namespaces made for others")
    fd = load_native_keeper()
    if fd is None:
        pytest.skip(f"{NATIVE_KEEPER} is not built (scripts/setup.sh builds it with gcc)")
    try:
        yield fd
    finally:
        os.close(fd)


def _inside(ns_fd: int, nstype: int, path: str) -> str:
    """``path`` read by a child that joined the namespace ``ns_fd`` (the test stays out)."""
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_r)
            syscalls.setns(ns_fd, nstype)
            with open(path, "rb") as fh:
                os.write(read_w, fh.read())
            code = 0
        finally:
            os._exit(code)
    os.close(read_w)
    with os.fdopen(read_r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.decode()


def _ns_link(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_user_namespace_made_by_the_helper_maps_root_to_the_sandboxs_range(
    helper: int,
) -> None:
    fd = userns.create_userns(FIRST_ID, 65536, helper)
    try:
        assert _ns_link(fd).startswith("user:[")
        assert _ns_link(fd) != os.readlink("/proc/self/ns/user")
        for name in ("uid_map", "gid_map"):
            fields = _inside(fd, syscalls.CLONE_NEWUSER, f"/proc/self/{name}").split()
            assert fields == ["0", str(FIRST_ID), "65536"], name
    finally:
        os.close(fd)


def test_an_empty_network_namespace_made_by_the_helper_has_only_loopback_up(helper: int) -> None:
    fd = syscalls.namespace_by_helper(syscalls.CLONE_NEWNET, "net", lambda _pid: None, helper)
    try:
        assert _ns_link(fd).startswith("net:[")
        assert _ns_link(fd) != os.readlink("/proc/self/ns/net")
        devices = _inside(fd, syscalls.CLONE_NEWNET, "/proc/self/net/dev")
        names = [line.split(":")[0].strip() for line in devices.splitlines()[2:]]
        assert names == ["lo"]
        # lo is up (made ahead, so the agent need not bring it up on a create's path): the
        # kernel gave it 127.0.0.1, which it does only when the link comes up
        assert "127.0.0.1" in _inside(fd, syscalls.CLONE_NEWNET, "/proc/self/net/fib_trie")
    finally:
        os.close(fd)


def test_the_helper_is_the_native_program_and_holds_only_its_two_pipes(helper: int) -> None:
    """Not a fork of the caller: its own executable, and none of the caller's descriptors."""
    leaked, other_end = os.pipe()
    os.set_inheritable(leaked, True)  # as a careless caller's descriptor would be
    seen: dict[str, object] = {}

    def look(pid: int) -> None:
        seen["comm"] = Path(f"/proc/{pid}/comm").read_text().strip()
        seen["fds"] = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        seen["exe"] = os.readlink(f"/proc/{pid}/exe")

    try:
        os.close(syscalls.namespace_by_helper(syscalls.CLONE_NEWNET, "net", look, helper))
    finally:
        os.close(leaked)
        os.close(other_end)
    assert seen["comm"] == "sandboxd-nshelp"
    assert "sandboxd-keeper" in str(seen["exe"])
    fds = seen["fds"]
    assert isinstance(fds, list)
    assert fds[:3] == [0, 1, 2]
    assert len(fds) == 5, f"the helper holds more than stdio and its two pipes: {fds}"
    assert leaked not in fds[3:]


def _run_helper(helper: int, *args: str, ready: int = 3, go: int = 4) -> int:
    """The program's exit status for ``unshare ARGS`` with pipes on ``ready``/``go``."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    os.close(go_w)  # released at once, if it ever got that far
    try:
        proc = subprocess.run(
            [f"/proc/self/fd/{helper}", "unshare", *args],
            pass_fds=(helper, ready_w, go_r),
            timeout=30,
            check=False,
        )
    finally:
        for fd in (ready_r, ready_w, go_r):
            os.close(fd)
    return proc.returncode


@pytest.mark.parametrize(
    "args",
    [
        [str(syscalls.CLONE_NEWNS), "3", "4"],  # a mount namespace: not one of the two kinds
        [str(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET), "3", "4"],
        ["0", "3", "4"],
        ["user", "3", "4"],
        [str(syscalls.CLONE_NEWNET), "1", "4"],  # stdout is no pipe of ours
        [str(syscalls.CLONE_NEWNET), "4", "4"],
        [str(syscalls.CLONE_NEWNET), "3", "-4"],
        [str(syscalls.CLONE_NEWNET), "3", "99999999999"],
    ],
)
def test_the_helper_refuses_other_kinds_and_bad_descriptors(helper: int, args: list[str]) -> None:
    assert _run_helper(helper, *args) == 2


def test_the_helper_ends_with_its_parent(helper: int) -> None:
    """A caller killed while the helper waits leaves no helper behind."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    # A parent that starts the helper with both pipes, then waits to be killed.
    script = (
        "import os, sys, time; h, r, g = map(int, sys.argv[1:]);"
        "pid = os.posix_spawn(f'/proc/self/fd/{h}', ['x', 'unshare', str(1 << 30), str(r),"
        " str(g)], {}); print(pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        ["python3", "-c", script, str(helper), str(ready_w), str(go_r)],
        pass_fds=(helper, ready_w, go_r),
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(ready_w)
    os.close(go_r)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.read(ready_r, 1) == b"1"  # unshared and waiting
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
            assert time.monotonic() < deadline, "the helper outlived its parent"
            time.sleep(0.01)
    finally:
        os.close(ready_r)
        os.close(go_w)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
