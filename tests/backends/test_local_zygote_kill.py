"""The zygote killed with SIGKILL while a burst of creates is on its way through it.

Every create goes through the zygote: it hands the request to a keeper and agent pair forked
ahead, or forks one. Killed in the middle of a burst, some requests were claimed (their pairs
go on building), some read and not yet handed on, some still unread in its socket. The
claimed ones end as running sandboxes; the others are made again with a new zygote (nothing
of them ran), after their failed attempt took its parts with it: a pair that kept building
for an attempt the runner gave up would hold a uid range, a writable layer and a network the
runner then hands to the next sandbox. Nothing of any of them outlives its destroy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from pathlib import Path

import pytest

from sandboxd.backends.base import EgressType, NetworkSpec
from sandboxd.backends.conformance import Harness, run
from sandboxd.backends.errors import BackendUnavailable, SandboxStartError
from sandboxd.backends.local import LocalBackend
from sandboxd.backends.local.prepared_ids import PREPARED
from sandboxd.images import ImageStore
from tests.support.leftovers import PROCESS_NAMES, host_network_leftovers
from tests.support.polling import until

from .disk_support import loop_devices, wait_for_loops
from .image_refs import BUSYBOX

BURST = 10


def our_processes(data: Path, group: str) -> list[str]:
    """Sandboxd processes of this backend: in its cgroups, or naming or holding its data.

    Why not every sandboxd process: other test workers run sandboxes at the same time. An
    agent that outlived its create was moved into the backend's cgroups by its keeper (or it
    ends with its keeper), a keeper holds its state directory and a zygote names its run
    directory; a spare ends with its zygote.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm not in PROCESS_NAMES:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            if (
                group in Path(f"/proc/{pid}/cgroup").read_text()
                or str(data) in cmdline
                or any(path.startswith(str(data)) for path in held)
            ):
                found.append(f"{pid} {comm}")
        except OSError:
            continue  # gone meanwhile
    return found


def go(aio: asyncio.Runner, coro: object) -> object:
    return aio.run(asyncio.wait_for(coro, 180))  # type: ignore[arg-type]


@pytest.mark.parametrize("egress", [EgressType.NONE, EgressType.INTERNET])
def test_a_zygote_killed_amid_a_burst_leaves_every_create_running(
    aio: asyncio.Runner,
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
    egress: EgressType,
) -> None:
    """Ten creates at once; the zygote is killed with SIGKILL as soon as three requests wait
    on it (how many of the others it had handed on varies from run to run). Every create ends,
    within the test's bound, running (and answering an exec): those the zygote had not handed
    on are made again with a new zygote (before, 5-8 of 10 failed here without egress).
    Each running sandbox has its own uid range. A create after the kill works too.
    After every sandbox is destroyed and the backend closed, no process, link, rule or loop
    device of theirs is left, and every uid range is free again."""
    data = tmp_path / "zygote-kill"
    backend = LocalBackend(data, images=image_store)
    h = Harness(backend, BUSYBOX, None, lambda: backend)
    network = NetworkSpec(egress=egress)
    tags: set[str] = set()  # every network the backend held while the test looked

    async def note_networks(creates: list[asyncio.Future[None]]) -> None:
        """Note the networks of the creates (failed ones too) while they are on their way."""
        while not all(create.done() for create in creates):
            tags.update(lease.tag for lease in backend._net.claimed_leases())
            await asyncio.sleep(0.002)

    async def scenario() -> None:
        try:
            async with h.sandbox(command=("sleep", "1000")):  # the zygote and its spares
                pass
            specs = [h.spec(command=("sleep", "1000"), network=network) for _ in range(BURST)]
            creates = [asyncio.ensure_future(backend.create_and_start(s)) for s in specs]
            watch = asyncio.ensure_future(note_networks(creates))
            await until(  # the kill comes once three requests wait on the zygote
                "three requests waiting on the zygote, or a create done",
                lambda: len(backend._zygote._pending) >= 3 or any(c.done() for c in creates),
                interval=0.001,
            )
            zygote = backend._zygote._proc.pid  # type: ignore[union-attr]
            os.kill(zygote, signal.SIGKILL)
            outcomes = await asyncio.gather(*creates, return_exceptions=True)
            await watch
            failed = [repr(o) for o in outcomes if o is not None]
            assert not failed, f"{len(failed)} of {BURST} creates failed: {failed}"
            running = [s.sandbox_id for s in specs]
            ranges = set()
            for sid in running:
                assert (await run(h, sid, ["echo", "up"])).stdout == b"up\n", sid
                ids = backend._records[sid].ids
                assert ids is not None
                ranges.add(ids.first)
            assert len(ranges) == len(running), "two running sandboxes share a uid range"
            async with h.sandbox(command=("sleep", "1000"), network=network) as later:
                assert (await run(h, later, ["echo", "later"])).stdout == b"later\n"
                tags.update(lease.tag for lease in backend._net.claimed_leases())
            for sid in running:
                await backend.destroy(sid)
            assert not backend._records, f"records left: {sorted(backend._records)}"
        finally:
            for sid in list(backend._records):
                await backend.destroy(sid)
            await backend.close()
        assert await wait_for_loops(data / "disk", 0) == []
        assert backend._ids.claimed() == [], "uid ranges still claimed"
        assert backend._net.claims() == {}, "network claims left"

        def networks() -> list[str]:
            return sorted(x for x in host_network_leftovers() if any(t in x for t in tags))

        for what, probe in (
            ("processes", functools.partial(our_processes, data, backend._group)),
            ("links and rules", networks),
        ):
            with contextlib.suppress(AssertionError):  # then say what is left
                await until(f"no {what} of the backend left", lambda p=probe: not p(), 15)
            assert probe() == [], f"{what} left"

    go(aio, scenario())
    assert loop_devices(data / "disk") == []


def test_a_request_the_zygote_never_read_is_made_again_with_a_new_zygote(
    aio: asyncio.Runner,
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The zygote is stopped (SIGSTOP), a create sends its request, and the zygote is killed
    (SIGKILL) with the request still unread in its socket: the create runs, built by a new
    zygote, and holds one uid range (the failed attempt's went back). A create that fails for
    another reason (its command does not exist) is not made again. Nothing is claimed after
    the close."""
    data = tmp_path / "zygote-lost"
    backend = LocalBackend(data, images=image_store)
    h = Harness(backend, BUSYBOX, None, lambda: backend)
    network = NetworkSpec(egress=EgressType.NONE)  # no await between the id range and spawn

    async def scenario() -> None:
        try:
            async with h.sandbox(command=("sleep", "1000")):  # the zygote and its spares
                pass
            zygote = backend._zygote._proc.pid  # type: ignore[union-attr]
            ranges = backend._ranges  # user namespaces made ahead go through the zygote too

            def quiet() -> bool:
                refill = ranges._task
                done = refill is None or refill.done()
                return done and len(ranges.ready) >= ranges.depth and not backend._zygote._pending

            await until("no request on its way and no refill due", quiet)
            os.kill(zygote, signal.SIGSTOP)
            spec = h.spec(command=("sleep", "1000"), network=network)
            create = asyncio.ensure_future(backend.create_and_start(spec))
            # The spawn is the request on its way: the next refill is due 50 ms after it.
            await until("the request sent", lambda: bool(backend._zygote._pending), 10, 0.001)
            os.kill(zygote, signal.SIGKILL)
            await create
            assert backend._zygote._proc.pid != zygote  # type: ignore[union-attr]
            assert (await run(h, spec.sandbox_id, ["echo", "up"])).stdout == b"up\n"
            assert "creating it again with a new zygote" in caplog.text
            held = [label for _ids, label in backend._ids.claims() if label != PREPARED]
            assert held == [spec.sandbox_id], held  # the failed attempt's range went back
            caplog.clear()
            with pytest.raises(SandboxStartError, match="no-such-program"):
                await backend.create_and_start(h.spec(command=("/no-such-program",)))
            assert "creating it again" not in caplog.text
            await backend.destroy(spec.sandbox_id)
        finally:
            for sid in list(backend._records):
                await backend.destroy(sid)
            await backend.close()
        assert backend._ids.claimed() == [], "uid ranges still claimed"
        assert backend._net.claims() == {}, "network claims left"

    with caplog.at_level(logging.WARNING, logger="sandboxd.backends.local.backend"):
        go(aio, scenario())
    assert loop_devices(data / "disk") == []


def test_a_zygote_that_will_not_start_makes_the_backend_unavailable_not_the_request(
    aio: asyncio.Runner,
    image_store: ImageStore,
    busybox_rootfs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner whose zygote cannot start fails every create, whatever it asks for: the
    backend is unavailable (UNAVAILABLE, counted against the runner, so placement backs it
    off), not an internal error (as it was when the zygote failed before the build) nor a
    start error (the request's fault, as it was when it failed during the build, which left
    the runner the least loaded and sent it every Start). The sabotage: the interpreter the
    zygote is started with is ``/bin/false``, which exits without a word."""
    from sandboxd.backends.local import supervisor
    from sandboxd.controlplane.runner_link import failure_error
    from sandboxd.controlplane.start_backoff import blames_runner
    from sandboxd.runner.failures import from_backend_error

    monkeypatch.setattr(supervisor, "sealed_interpreter", lambda: None)
    monkeypatch.setattr(supervisor.sys, "executable", "/bin/false")
    backend = LocalBackend(tmp_path / "backend", images=image_store)
    harness = Harness(backend, BUSYBOX, None, lambda: backend, prefix=f"nz{os.getpid()}-")
    spec = harness.spec()

    async def scenario() -> None:
        try:
            with pytest.raises(BackendUnavailable, match="zygote failed to start") as caught:
                await backend.create_and_start(spec)
            failure = from_backend_error(caught.value, spec.sandbox_id)
            assert blames_runner(failure_error(failure)), failure
            assert not (tmp_path / "backend" / "sandboxes" / spec.sandbox_id).exists()
        finally:
            await backend.close()

    aio.run(scenario())
