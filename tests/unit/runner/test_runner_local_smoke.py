"""One real smoke test: the supervisor driving the real local backend and a real image.

Needs root and the busybox image (from the machine-wide build cache, or mmdebstrap to build
it); skips with the reason otherwise. The exhaustive checks of the backend are its own
conformance suite (tests/backends) and the end-to-end tests are the lead's; this only shows
that the supervisor's calls and the real backend's answers fit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from sandboxd.backends.errors import BackendError
from sandboxd.images import ImageError, ImageStore, build_busybox_image
from sandboxd.runner.resources import ReservationLedger
from sandboxd.runner.sandboxes import build_local_backend
from sandboxd.runner.supervisor import SandboxSupervisor
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.exec_standin import CAPACITY, ExecStandin, Outbox, Rig, spec, start


def _busybox(store: ImageStore) -> None:
    try:
        build_busybox_image(store, progress=lambda _line: None)
    except ImageError as exc:
        pytest.skip(f"no busybox image: {exc}")


@pytest.mark.timeout(120)
def test_start_exec_files_stop_delete_on_the_local_backend(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the local backend needs root")

    async def main() -> None:
        backend = build_local_backend(tmp_path / "data")
        images = ImageStore(tmp_path / "data")  # where the local backend looks (from_config)
        found = await backend.fingerprint()
        if not found.available:
            pytest.skip(f"local backend unavailable: {found.reason}")
        _busybox(images)
        outbox = Outbox()
        async with ExecStandin() as execs:
            sup = SandboxSupervisor(
                backend, ReservationLedger(CAPACITY), outbox.send,
                records_dir=tmp_path / "records",
            )  # fmt: skip
            rig = Rig(sup, None, ReservationLedger(CAPACITY), outbox, execs)  # type: ignore[arg-type]
            sid = f"smoke-{os.getpid()}"
            try:

                async def run(rid: str, **action: object) -> runner_pb2.CommandResult:
                    sup.handle(runner_pb2.Command(request_id=rid, **action))  # type: ignore[arg-type]
                    return await outbox.result(rid, timeout=60)

                result = await run("1", **start(spec(sid, memory_bytes=256 << 20)))
                assert not result.HasField("failure"), result.failure

                rig.operate(exec=runner_pb2.OpenExec(
                    stream_id="e1", sandbox_id=sid, command=["echo", "hi"]))  # fmt: skip
                frames = await (await execs.stream("e1", timeout=30)).until_end(timeout=30)
                assert [f.WhichOneof("response") for f in frames] == ["output", "exit"]
                assert frames[0].output.data == b"hi\n" and frames[1].exit.exit_code == 0

                big = os.urandom(3 << 20)  # streamed in frames, through a pipe, both ways
                assert (await rig.write_file("/tmp/d/f", big, sandbox_id=sid)).size == len(big)
                size, data, done = await rig.read_file("/tmp/d/f", sandbox_id=sid)
                assert (size, data, done.size) == (len(big), big, len(big))
                _, _, done = await rig.read_file("/nope", sandbox_id=sid)
                assert done.failure.reason == "CWSANDBOX_FILE_NOT_FOUND"

                result = await run(
                    "5", stop=runner_pb2.StopSandbox(sandbox_id=sid, grace_seconds=5)
                )
                assert result.WhichOneof("result") == "state"
                kinds = outbox.kinds()
                assert kinds.index("event:SANDBOX_PHASE_COMPLETED") < kinds.index("result:5")
                [completed] = [m.event for m in outbox.messages if m.event.phase == 2]
                assert completed.exit_code == 0  # the default keep-alive traps SIGTERM

                result = await run("6", delete=runner_pb2.DeleteSandbox(sandbox_id=sid))
                assert result.WhichOneof("result") == "done" and sup.snapshot() == []

                # A main process that exits by itself is COMPLETED with its own exit code.
                short = spec(f"{sid}-x", command=["/bin/sh", "-c", "exit 3"])
                assert not (await run("7", **start(short))).HasField("failure")
                async with asyncio.timeout(30):
                    while not [e for e in sup.snapshot() if e.phase == 2]:
                        await asyncio.sleep(0.05)
                [ended] = sup.snapshot()
                assert (ended.sandbox_id, ended.exit_code) == (f"{sid}-x", 3)
            finally:
                await sup.close()
                leftovers = {e.sandbox_id for e in sup.snapshot()} | set(await backend.recover())
                for leftover in leftovers:
                    with contextlib.suppress(BackendError):
                        await backend.destroy(leftover)
                await backend.close()

    asyncio.run(main())
