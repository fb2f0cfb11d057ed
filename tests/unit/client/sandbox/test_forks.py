"""A fork of a process that has used the client (``_fork_guard.py``, ``_shared_channels.py``).

Each case runs in a process of its own, started here: gRPC's fork setting is read once per
process, and only a fresh interpreter shows what ``import cwsandbox`` chose. The stand-in
gateway (client-side unit tests only) runs in this test process.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.unit.client.sandbox.gateway_standin import Gateway

#: Uses the client, then forks; what the children did comes out as one line per child.
_FORKING_CLIENT = """
import gc, os, sys, time
from cwsandbox import Sandbox, _loop, _shared_channels
from cwsandbox.exceptions import CWSandboxError

what = sys.argv[1]
sandbox = Sandbox.run()
sandbox.exec(["true"]).result()
loop = _loop.loop()
print("parent-pool", _shared_channels.pool_size(loop))
for _ in range(int(sys.argv[2])):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if what == "compute":  # never touches the client: allocates, collects, exits
            junk = [{"n": n} for n in range(20000)]
            gc.collect()
            time.sleep(0.01)
            said = f"pool {_shared_channels.pool_size(loop)}"
        else:
            try:
                Sandbox.run().exec(["true"]).result(timeout=30)
                said = "ran"
            except CWSandboxError as exc:
                said = f"{exc.reason} {exc}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 4096):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    print("child", status, b"".join(chunks).decode() or "nothing")
    sandbox.exec(["true"]).result()  # the parent's channel still works
sandbox.stop(graceful_shutdown_seconds=0).result()
print("parent-done")
"""


def _fork_from_a_client(what: str, children: int, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_CLIENT, what, str(children)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] != "parent-pool 0" and lines[-1] == "parent-done", done.stdout
    return lines[1:-1]


def test_children_that_leave_the_client_alone_survive_the_fork(gateway: Gateway) -> None:
    """gRPC's fork support restarted its threads in every child, where they crashed about
    one child in 20 (SIGSEGV) though the child never used gRPC; the client turns it off."""
    children = _fork_from_a_client("compute", 40)
    assert children == ["child 0 pool 0"] * 40  # exit 0, and the parent's pool is not theirs
    assert len({call.peer for call in gateway.servicer.recorded("StreamExec")}) == 1


def test_a_child_that_uses_the_client_after_the_fork_is_told_why(gateway: Gateway) -> None:
    """It used to crash or hang (gRPC cannot run again after the fork); now it gets an error
    that names the fork and what to do instead, and the parent goes on."""
    [child] = _fork_from_a_client("use", 1)
    assert child.startswith("child 0 CWSANDBOX_USED_AFTER_FORK this process was forked"), child
    assert "'spawn'" in child


def test_a_fork_setting_the_process_chose_is_kept() -> None:
    code = "import os, cwsandbox; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    for chosen, seen in ((None, "false"), ("true", "true")):
        env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
        if chosen is not None:
            env["GRPC_ENABLE_FORK_SUPPORT"] = chosen
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
            check=True,
        )  # fmt: skip
        assert done.stdout.strip() == seen
