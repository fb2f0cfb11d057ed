"""The async core of a sandbox handle: start, wait, stop (protocol §4.2-§4.5).

``Lifecycle`` owns the handle's state and transport and does the RPCs; ``Sandbox`` wraps it
in the public, mostly synchronous API. All methods here run on the background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from cwsandbox._polling import Fetch, PollSettings, get_with_retry, poll
from cwsandbox._sandbox_state import SandboxState
from cwsandbox._status import STARTUP_DONE, TERMINAL, SandboxStatus
from cwsandbox._transport import EXEC_WAITS_FEATURE, Transport
from cwsandbox.exceptions import (
    CWSandboxError,
    SandboxError,
    SandboxFailedError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxTerminalStateUnavailableError,
    SandboxTerminatedError,
)
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["Lifecycle"]

#: After a successful Stop, Get may answer NOT_FOUND for this long before we give up.
NOT_FOUND_AFTER_STOP_SECONDS = 2.0
#: COMPLETED without an exit code: look again this many times, this far apart (§4.3 step 4).
EXIT_CODE_REPOLLS = 2
EXIT_CODE_REPOLL_SECONDS = 2.0

_USABLE = (SandboxStatus.RUNNING, SandboxStatus.PAUSED)


class Lifecycle:
    """Start/wait/stop for one sandbox; at most one Start is ever in flight."""

    def __init__(
        self,
        transport: Transport,
        *,
        request: gw.StartSandboxRequest | None,
        request_timeout: float,
        poll_settings: PollSettings,
        state: SandboxState | None = None,
    ) -> None:
        self.transport = transport
        self.request = request
        self.request_timeout = request_timeout
        self.poll_settings = poll_settings
        self.state = state or SandboxState()
        self._start_task: asyncio.Future[None] | None = None
        #: ``stop()`` ran before the sandbox was ever started: it never will be.
        self.abandoned = False
        #: Largest payload sent with unary AddFile; lowered by a server's ``max_size_bytes``.
        self.file_op_cap = 32 * 1024 * 1024
        #: Whether a file already fell back to streaming (logged once per handle).
        self.streamed_files = False
        #: The server that answered our Start waits, in an exec, for the sandbox to run.
        self.server_waits_for_start = False

    # --- start ---------------------------------------------------------------------------

    async def ensure_started(self) -> str:
        """Send Start once (lazily, for ``Session.sandbox()``); return the sandbox id."""
        if self.state.sandbox_id is not None:
            return self.state.sandbox_id
        if self.abandoned or self.request is None:
            raise SandboxNotRunningError("the sandbox was stopped before it was started")
        task = self._start_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._start_task = asyncio.ensure_future(self._start())
        await asyncio.shield(task)
        assert self.state.sandbox_id is not None
        return self.state.sandbox_id

    async def _start(self) -> None:
        assert self.request is not None
        resp, features = await self.transport.start(self.request, timeout=self.request_timeout)
        if not resp.sandbox_id:
            raise SandboxError("start failed: the server returned no sandbox id")
        self.state.apply_start(resp)
        self.server_waits_for_start = EXEC_WAITS_FEATURE in features

    # --- Get and polling -------------------------------------------------------------------

    def fetch(self, sandbox_id: str) -> Fetch:
        """A Get of ``sandbox_id`` with the given per-call deadline."""

        async def get(timeout: float) -> gw.GetSandboxResponse:
            return await self.transport.unary(
                "Get",
                gw.GetSandboxRequest(sandbox_id=sandbox_id),
                gw.GetSandboxResponse,
                timeout=timeout,
                operation="get",
                sandbox_id=sandbox_id,
            )

        return get

    async def _poll(self, done: frozenset[int], timeout: float | None, fetch: Fetch) -> None:
        sid = self.state.sandbox_id
        resp = await poll(
            fetch, done, timeout=timeout, settings=self.poll_settings, what=f"sandbox {sid}"
        )
        self.state.apply_get(resp, polling=True)
        await self._repoll_exit_code(fetch)

    async def _repoll_exit_code(self, fetch: Fetch) -> None:
        st = self.state
        if st.status is not SandboxStatus.COMPLETED or st.returncode is not None:
            return
        if st.stopped_by_client:
            return
        for _ in range(EXIT_CODE_REPOLLS):
            await asyncio.sleep(EXIT_CODE_REPOLL_SECONDS)
            try:
                resp = await fetch(EXIT_CODE_REPOLL_SECONDS)
            except CWSandboxError:
                continue
            if resp.HasField("exit_code"):
                st.returncode = resp.exit_code
                return

    async def get_status(self) -> SandboxStatus:
        """One Get (retried on transient errors); UNSPECIFIED is reported as such."""
        sid = await self._started_id()
        resp = await get_with_retry(self.fetch(sid), self.poll_settings, what=f"sandbox {sid}")
        return self.state.apply_get(resp, polling=False)

    async def _started_id(self) -> str:
        if self.state.sandbox_id is None and self._start_task is not None:
            await asyncio.shield(self._start_task)
        if self.state.sandbox_id is None:
            raise SandboxNotRunningError("the sandbox has not been started")
        return self.state.sandbox_id

    def _failed(self) -> SandboxFailedError:
        """FAILED as an error that says why, in the server's words."""
        sid, why = self.state.sandbox_id, self.state.status_reason
        message = f"sandbox {sid} failed" + (f": {why}" if why else "")
        return SandboxFailedError(message, sandbox_id=sid, status_reason=why)

    def _raise_for_outcome(self) -> None:
        status, sid = self.state.status, self.state.sandbox_id
        if status is SandboxStatus.FAILED:
            raise self._failed()
        if status is SandboxStatus.TERMINATED:
            raise SandboxTerminatedError(f"sandbox {sid} was terminated")

    async def wait_ready(self, timeout: float | None) -> None:
        """Poll until RUNNING (or an end state); FAILED/TERMINATED raise (§4.3)."""
        sid = await self.ensure_started()
        if self.state.status is None or not self.state.status.is_terminal:
            limit = self.request_timeout if timeout is None else timeout
            await self._poll(STARTUP_DONE, limit, self.fetch(sid))
        self._raise_for_outcome()

    async def ensure_running(self) -> str:
        """Before exec/file ops: start if needed, wait for RUNNING, refuse if it has ended."""
        sid = await self.ensure_started()
        st = self.state
        if st.stopping:
            raise SandboxNotRunningError(f"sandbox {sid} is {st.status or 'stopping'}")
        if st.status not in _USABLE:
            await self.wait_ready(None)
            if st.status not in _USABLE:
                raise SandboxNotRunningError(f"sandbox {sid} is {st.status}, not running")
        return sid

    async def exec_target(self) -> tuple[str, bool]:
        """Before an exec: the sandbox id, and whether the exec itself may wait for RUNNING.

        Why: right after our Start the sandbox is still being created; where the server
        offered it, the exec goes out at once and the server starts the command the moment
        the sandbox runs, instead of a Get waiting for RUNNING and only then the exec (a
        round trip and a call set-up fewer on every create). Anything else (a handle from
        ``from_id``, a server without the extension, a known status) takes
        :meth:`ensure_running`.
        """
        sid = await self.ensure_started()
        st = self.state
        if self.server_waits_for_start and st.status is SandboxStatus.PENDING and not st.stopping:
            return sid, True
        return await self.ensure_running(), False

    def learn_from_exec(self, resp: gw.GetSandboxResponse) -> None:
        """Take what the server said of the sandbox ahead of an exec it handed to it."""
        self.state.apply_get(resp, polling=True)

    async def wait_complete(self, timeout: float | None, raise_on_termination: bool) -> None:
        """Poll until the sandbox has ended; FAILED raises, TERMINATED/our stop optionally."""
        sid = await self.ensure_started()
        if self.state.status is None or not self.state.status.is_terminal:
            limit = self.request_timeout if timeout is None else timeout
            await self._poll(TERMINAL, limit, self.fetch(sid))
        st = self.state
        if st.status is SandboxStatus.FAILED:
            raise self._failed()
        if raise_on_termination and (st.status is SandboxStatus.TERMINATED or st.stopped_by_client):
            raise SandboxTerminatedError(f"sandbox {sid} was terminated")

    # --- stop --------------------------------------------------------------------------------

    async def stop(
        self,
        *,
        graceful_shutdown_seconds: float,
        missing_ok: bool,
        snapshot_on_stop: bool,
        wait_for_ready: bool,
        idempotency_key: str | None,
    ) -> None:
        """Stop, then wait (without limit) until the server reports a final status (§4.5)."""
        if graceful_shutdown_seconds < 0:
            raise ValueError("graceful_shutdown_seconds must not be negative")
        if self.state.sandbox_id is None and self._start_task is not None:
            with contextlib.suppress(CWSandboxError):  # never started: nothing to stop
                await asyncio.shield(self._start_task)
        sid = self.state.sandbox_id
        if sid is None:
            self.abandoned = True
            return
        if self.state.status is not None and self.state.status.is_terminal:
            return
        grace = int(graceful_shutdown_seconds)
        request = gw.StopSandboxRequest(
            sandbox_id=sid,
            graceful_shutdown_seconds=grace,
            file_system_snapshot_on_stop=snapshot_on_stop,
            max_timeout_seconds=grace + 5,
        )
        deadline = grace + 10.0
        if snapshot_on_stop:
            request.max_timeout_seconds = 600
            request.wait_for_ready = wait_for_ready
            request.idempotency_key = idempotency_key or uuid.uuid4().hex
            deadline = 600 + (grace or 30) + 35.0
        try:
            resp = await self.transport.unary(
                "Stop",
                request,
                gw.StopSandboxResponse,
                timeout=deadline,
                operation="stop",
                sandbox_id=sid,
            )
        except SandboxNotFoundError:
            if not missing_ok:
                raise
            self.state.set_status(SandboxStatus.TERMINATED)
            return
        if not resp.success:
            raise SandboxError(f"Failed to stop sandbox: {resp.error_message}")
        if resp.file_system_snapshot_id:
            self.state.file_system_snapshot_id = resp.file_system_snapshot_id
        self.state.stopped_by_client = True
        self.state.set_status(SandboxStatus.TERMINATING)
        await self._poll(TERMINAL, None, self._fetch_after_stop(sid))

    def _fetch_after_stop(self, sandbox_id: str) -> Fetch:
        """Get that reads a brief NOT_FOUND as "still terminating" (§4.5)."""
        get = self.fetch(sandbox_id)
        first_missing: float | None = None

        async def fetch(timeout: float) -> gw.GetSandboxResponse:
            nonlocal first_missing
            try:
                resp = await get(timeout)
            except SandboxNotFoundError as err:
                now = time.monotonic()
                first_missing = now if first_missing is None else first_missing
                if now - first_missing >= NOT_FOUND_AFTER_STOP_SECONDS:
                    raise SandboxTerminalStateUnavailableError(
                        f"sandbox {sandbox_id} was stopped, but the server no longer reports "
                        "its final status"
                    ) from err
                return gw.GetSandboxResponse(
                    sandbox_id=sandbox_id,
                    sandbox_status=gw.SandboxStatus.SANDBOX_STATUS_TERMINATING,
                )
            first_missing = None
            return resp

        return fetch
