"""Process lifecycles: the control plane alone, or the all-in-one ``sandboxd up``.

Why the runner runs in the same event loop for ``up``: a single command on a laptop should
give a working platform with one process to stop. The runner speaks the same runner protocol
as a remote runner, to the same handlers, but by default over the control plane's in-process
link (:mod:`sandboxd.controlplane.local_link`: the messages handed over in memory, no HTTP/2
and no serialisation of file bytes, the fast path of issue 9); ``--runner-link grpc`` makes
it dial the control plane's port as a remote runner does. Either way ``up`` exercises the
real protocol and its identity checks — including joining: on first start ``up`` mints a
single-use join token pinned to its runner's id, the runner trades it for its own credential
(kept in ``<data_dir>/runner``), and later starts present that credential.

``up`` prints ``CWSANDBOX_API_KEY=<the first administrator key>`` (and, with TLS,
``CWSANDBOX_CA_FILE=``) before the ready line ``CWSANDBOX_BASE_URL=...``, so a script that
waits for the ready line finds everything it needs to export.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from sandboxd.controlplane.server import ControlPlane, ControlPlaneSettings
from sandboxd.images import ImageNotFound, ImageStore, build_image
from sandboxd.runner.agent import RunnerAgent
from sandboxd.runner.credentials import load_credential
from sandboxd.runner.identity import resolve_runner_id
from sandboxd.runner.metrics import RunnerCollector
from sandboxd.runner.sandboxes import build_local_backend
from sandboxd.runner.settings import RunnerSettings
from sandboxd.runner.stream import RunnerChannel
from sandboxd.startup_heap import freeze_startup_objects

IN_PROCESS = "in-process"
"""The local runner's calls are handed to the control plane in memory (local_link.py)."""
GRPC = "grpc"
"""The local runner dials the control plane's port, as a remote runner does."""
RUNNER_LINKS = (IN_PROCESS, GRPC)
READY_TIMEOUT_SECONDS = 60.0
DEFAULT_IMAGE = "python:3.11"
# Long enough for a slow first registration, short enough to be useless if it leaks.
LOCAL_JOIN_TOKEN_TTL_SECONDS = 600


def _link(control_plane: ControlPlane, runner_link: str) -> Callable[[], RunnerChannel] | None:
    """The local runner's link factory: the control plane's in-process one, or None (gRPC)."""
    if runner_link == GRPC:
        return None
    if runner_link != IN_PROCESS or control_plane.local_runners is None:
        raise ValueError(f"runner link must be {IN_PROCESS!r} or {GRPC!r}, not {runner_link!r}")
    return control_plane.local_runners.channel


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def ensure_default_image(data_dir: Path, ref: str = DEFAULT_IMAGE) -> None:
    """Build the client's default image on first start (cached afterwards), visibly."""
    store = ImageStore(data_dir)
    try:
        store.resolve(ref)
        return
    except ImageNotFound:
        pass
    print(
        f"sandboxd: building image {ref} from Debian packages (first start only; "
        "about a minute)...",
        file=sys.stderr,
        flush=True,
    )
    build_image(store, ref, progress=_progress)
    print(f"sandboxd: image {ref} ready", file=sys.stderr, flush=True)


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so both end the process cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def announce(
    control_plane: ControlPlane, *, api_key: str = "", ca_file: Path | None = None
) -> None:
    """Print the machine-readable lines on stdout, the ready line ``CWSANDBOX_BASE_URL`` last."""
    if api_key:
        print(f"CWSANDBOX_API_KEY={api_key}", flush=True)
    if ca_file is not None:
        print(f"CWSANDBOX_CA_FILE={ca_file.resolve()}", flush=True)
    if control_plane.metrics_port:
        base = f"http://{control_plane.metrics_address}"
        print(f"SANDBOXD_METRICS_URL={base}/metrics", flush=True)
        if "/metrics/runner" in control_plane.metrics_routes:
            print(f"SANDBOXD_RUNNER_METRICS_URL={base}/metrics/runner", flush=True)
    if control_plane.console is not None:
        print(f"SANDBOXD_CONSOLE_URL={control_plane.console.url}", flush=True)
    print(f"CWSANDBOX_BASE_URL={control_plane.base_url}", flush=True)


async def serve_control_plane(settings: ControlPlaneSettings) -> None:
    """Run a control plane until SIGINT/SIGTERM.

    The administrator key is not printed (service logs are widely read); its file is named.
    """
    stop = _stop_event()
    control_plane = ControlPlane(settings)
    await control_plane.start()
    freeze_startup_objects()
    print(
        f"sandboxd: administrator key in {settings.data_dir / 'admin-key'} (export it as "
        "CWSANDBOX_API_KEY for sandboxd keys/tokens/runners)",
        file=sys.stderr,
        flush=True,
    )
    announce(control_plane)
    try:
        await stop.wait()
    finally:
        await control_plane.stop()


async def _wait_until_registered(control_plane: ControlPlane, agent: RunnerAgent) -> None:
    async with asyncio.timeout(READY_TIMEOUT_SECONDS):
        while True:
            state = control_plane.registry.get(agent.runner_id)
            # Healthy here, and the runner has its credential (stored before it is kept):
            # a script that reads the ready line and stops `up` finds the runner's files.
            if (
                state is not None
                and control_plane.registry.is_healthy(state)
                and agent.has_credential
            ):
                return
            await asyncio.sleep(0.02)


async def stop_all_sandboxes(control_plane: ControlPlane, grace_seconds: int = 2) -> None:
    """Leave nothing running when the all-in-one platform exits."""
    live = [r for r in control_plane.sandboxes.live() if not r.terminal]
    if live:
        print(f"sandboxd: stopping {len(live)} sandbox(es)", file=sys.stderr, flush=True)
        await asyncio.gather(
            *(control_plane.lifecycle.stop(r, grace_seconds) for r in live),
            return_exceptions=True,
        )


async def local_join_token(control_plane: ControlPlane, state_dir: Path, runner_id: str) -> str:
    """A join token for the local runner, or "" when it already holds its credential.

    Pinned to the runner's id, so it also re-admits a runner whose credential file was lost.
    """
    if load_credential(state_dir, runner_id) is not None:
        return ""
    _, secret = await control_plane.identity.create_join_token(
        runner_id=runner_id, ttl_seconds=LOCAL_JOIN_TOKEN_TTL_SECONDS
    )
    return secret


async def run_all_in_one(
    settings: ControlPlaneSettings,
    runner_id: str | None = None,
    ca_file: Path | None = None,
    runner_link: str = IN_PROCESS,
) -> None:
    """Run a control plane and one local runner until SIGINT/SIGTERM.

    ``ca_file`` is what the local runner trusts when the control plane serves TLS.
    ``runner_link`` is how the runner reaches the control plane: :data:`IN_PROCESS`, or
    :data:`GRPC` (over the listening port, as a remote runner does).
    """
    stop = _stop_event()
    await asyncio.to_thread(ensure_default_image, settings.data_dir)
    backend = build_local_backend(settings.data_dir)
    control_plane = ControlPlane(settings)
    runner_metrics = CollectorRegistry()  # the local runner's, per sandbox: its own path
    control_plane.metrics_routes["/metrics/runner"] = runner_metrics
    await control_plane.start()
    state_dir = settings.data_dir / "runner"
    runner_id = resolve_runner_id(runner_id, state_dir)
    tls_ca = ca_file if control_plane.tls else None
    agent = RunnerAgent(
        RunnerSettings(
            control_plane=control_plane.base_url,
            join_token=await local_join_token(control_plane, state_dir, runner_id),
            runner_id=runner_id,
            ca_file=tls_ca,
            state_dir=state_dir,
            heartbeat_interval=settings.heartbeat_interval,
        ),
        backend=backend,
        link=_link(control_plane, runner_link),
    )
    runner_metrics.register(RunnerCollector(agent, asyncio.get_running_loop()))
    agent_task = asyncio.create_task(agent.run(), name="local-runner")
    stop_task = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        ready = asyncio.create_task(_wait_until_registered(control_plane, agent))
        done, _ = await asyncio.wait(
            {ready, agent_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            ready.result()
            freeze_startup_objects()
            announce(control_plane, api_key=control_plane.admin_key, ca_file=tls_ca)
            await asyncio.wait({agent_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        else:
            ready.cancel()
        if agent_task.done() and not agent_task.cancelled():
            agent_task.result()  # re-raise why the local runner stopped
    finally:
        await stop_all_sandboxes(control_plane)
        for task in (agent_task, stop_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await control_plane.stop()
        await backend.close()
