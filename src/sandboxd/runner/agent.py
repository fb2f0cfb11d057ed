"""The runner agent: dial out to the control plane, register, heartbeat, redial forever.

Why it is shaped this way:

* **Runners only dial out** (DESIGN.md rule 2), so the agent owns the connection's lifetime:
  one long-lived ``Connect`` stream per session, a fresh channel per redial, the same runner
  id every time (see :mod:`sandboxd.runner.identity`) so the control plane recognises it.
* **Transient trouble is routine.** A control plane that restarts or is unreachable costs one
  log line and a jittered backoff, never a traceback or a crash.
* **Rejection is final.** UNAUTHENTICATED or PERMISSION_DENIED (a bad join token) will not
  fix itself, so :meth:`RunnerAgent.run` raises :class:`RunnerRejectedError` instead of
  hammering the control plane.
* **One reader, many writers.** A single loop reads ``ControlMessage`` s and dispatches on
  ``WhichOneof("message")``; today it only sees ``registered``, and this is where pushed
  commands (create/stop sandbox, exec, ...) will be handled. Writers share the stream through
  :class:`~sandboxd.runner.stream.ControlStream`, which serialises them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

import sandboxd
from sandboxd._proto import runner_pb2
from sandboxd.runner.backoff import Backoff
from sandboxd.runner.fingerprint import fingerprint
from sandboxd.runner.identity import resolve_runner_id
from sandboxd.runner.resources import ReservationLedger
from sandboxd.runner.settings import RunnerSettings
from sandboxd.runner.stream import ControlStream, open_channel

__all__ = ["REJECTION_CODES", "RunnerAgent", "RunnerRejectedError", "RunnerSettings"]

_log = logging.getLogger(__name__)

# Codes that mean "this runner is not welcome", as opposed to "try again later".
REJECTION_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_MAX_REASON_CHARS = 200


class RunnerRejectedError(Exception):
    """The control plane refused this runner (bad join token or not permitted to join)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"control plane rejected the runner ({code.name}): {details}")
        self.code = code
        self.details = details


class ProtocolError(Exception):
    """The control plane answered something the protocol does not allow at that point."""


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_REASON_CHARS else line[: _MAX_REASON_CHARS - 1] + "…"


class RunnerAgent:
    """Keeps one runner registered with one control plane until cancelled.

    ``capabilities`` defaults to :func:`~sandboxd.runner.fingerprint.fingerprint` of this host
    (which may run ``nvidia-smi``, so construct the agent before entering a latency-sensitive
    loop); ``ledger`` defaults to a ledger over those capabilities. ``on_registered`` is called
    after each successful registration (every redial), e.g. for the CLI to announce it.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        ledger: ReservationLedger | None = None,
        capabilities: runner_pb2.Capabilities | None = None,
        *,
        on_registered: Callable[[runner_pb2.Registered], None] | None = None,
    ) -> None:
        self._settings = settings
        self._address = settings.address
        self._capabilities = capabilities if capabilities is not None else fingerprint()
        self._ledger = (
            ledger
            if ledger is not None
            else ReservationLedger.from_capabilities(self._capabilities)
        )
        self._runner_id = resolve_runner_id(settings.runner_id, settings.state_dir)
        self._on_registered = on_registered
        self._heartbeat_interval = settings.heartbeat_interval
        # Created per session (an Event binds to the loop that first waits on it).
        self._interval_changed: asyncio.Event | None = None
        self._connected = False

    @property
    def runner_id(self) -> str:
        """The id this runner registers with, identical on every redial."""
        return self._runner_id

    @property
    def settings(self) -> RunnerSettings:
        """The settings the agent was built with."""
        return self._settings

    @property
    def capabilities(self) -> runner_pb2.Capabilities:
        """What the runner advertises."""
        return self._capabilities

    @property
    def ledger(self) -> ReservationLedger:
        """Reservations behind the live resources in every heartbeat."""
        return self._ledger

    @property
    def connected(self) -> bool:
        """True while registered on an open stream."""
        return self._connected

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: the control plane's choice once registered."""
        return self._heartbeat_interval

    async def run(self) -> None:
        """Stay connected until cancelled; raise :class:`RunnerRejectedError` if refused."""
        settings = self._settings
        backoff = Backoff(settings.reconnect_backoff_min, settings.reconnect_backoff_max)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._session()
                reason = "control plane closed the stream"
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REJECTION_CODES:
                    details = _one_line(exc.details() or "")
                    _log.error(
                        "runner %s rejected by %s (%s: %s); check the join token",
                        self._runner_id,
                        settings.control_plane,
                        exc.code().name,
                        details,
                    )
                    raise RunnerRejectedError(exc.code(), details) from None
                reason = f"{exc.code().name}: {_one_line(exc.details() or '')}"
            except (ProtocolError, TimeoutError, asyncio.InvalidStateError, OSError) as exc:
                reason = _one_line(f"{type(exc).__name__}: {exc}")
            except Exception:
                _log.exception("runner %s: unexpected error in the control stream", self._runner_id)
                reason = "unexpected error"
            finally:
                was_registered, self._connected = self._connected, False
            # Only a session that stayed up a while counts as healthy: a control plane that
            # accepts and then drops us at once must still see the backoff grow.
            if was_registered and loop.time() - started >= settings.reconnect_backoff_max:
                backoff.reset()
            delay = backoff.next()
            _log.warning(
                "runner %s: no connection to %s (%s); redialing in %.1fs",
                self._runner_id,
                settings.control_plane,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One dial: register, then heartbeat and dispatch until the stream ends.

        Returns normally when the control plane ends the stream cleanly; raises on errors.
        Always cancels the call and closes the channel, including on cancellation.
        """
        channel = open_channel(self._address, keepalive_interval=self._settings.keepalive_interval)
        stream: ControlStream | None = None
        try:
            stream = ControlStream(channel)
            await stream.send(runner_pb2.RunnerMessage(register=self._register_message()))
            registered = await asyncio.wait_for(
                self._await_registered(stream), self._settings.register_timeout
            )
            self._on_session_registered(registered)
            await self._pump(stream)
        finally:
            if stream is not None:
                stream.cancel()
            await channel.close(None)

    def _register_message(self) -> runner_pb2.Register:
        return runner_pb2.Register(
            runner_id=self._runner_id,
            runner_group_id=self._settings.runner_group_id,
            tags=list(self._settings.tags),
            capabilities=self._capabilities,
            join_token=self._settings.join_token,
            version=sandboxd.__version__,
            resources=self._ledger.snapshot(),
        )

    async def _await_registered(self, stream: ControlStream) -> runner_pb2.Registered:
        message = await stream.receive()
        if message is None:
            raise ProtocolError("control plane ended the stream before answering register")
        if message.WhichOneof("message") != "registered":
            raise ProtocolError(
                f"expected 'registered', got {message.WhichOneof('message')!r} first"
            )
        return message.registered

    def _on_session_registered(self, registered: runner_pb2.Registered) -> None:
        self._apply_interval(registered)
        self._connected = True
        profiles = ", ".join(registered.profile_names) or "none bound"
        _log.info(
            "runner %s registered with %s (profiles: %s; heartbeat every %.1fs)",
            self._runner_id,
            self._settings.control_plane,
            profiles,
            self._heartbeat_interval,
        )
        if self._on_registered is not None:
            self._on_registered(registered)

    def _apply_interval(self, registered: runner_pb2.Registered) -> None:
        if registered.heartbeat_interval_ms > 0:
            self._heartbeat_interval = registered.heartbeat_interval_ms / 1000.0
        else:
            self._heartbeat_interval = self._settings.heartbeat_interval
        if self._interval_changed is not None:
            self._interval_changed.set()

    async def _pump(self, stream: ControlStream) -> None:
        """Run the heartbeat loop and the reader loop; the first to finish ends the session."""
        self._interval_changed = asyncio.Event()
        reader = asyncio.create_task(self._reader_loop(stream), name="runner-reader")
        heartbeats = asyncio.create_task(
            self._heartbeat_loop(stream, self._interval_changed), name="runner-heartbeat"
        )
        try:
            await asyncio.wait({reader, heartbeats}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, heartbeats):
                task.cancel()
            await asyncio.gather(reader, heartbeats, return_exceptions=True)
        # The reader knows how the stream ended (status code); prefer its outcome.
        for task in (reader, heartbeats):
            if task.done() and not task.cancelled() and task.exception() is not None:
                task.result()
        # Otherwise the reader saw a clean end of stream.

    async def _heartbeat_loop(self, stream: ControlStream, changed: asyncio.Event) -> None:
        """Send a heartbeat every interval, on a fixed schedule rather than drifting.

        A new interval from the control plane takes effect at once: the wait is woken and
        recomputed instead of finishing a possibly long old interval first.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            changed.clear()
            due = last + self._heartbeat_interval
            if due > loop.time():
                try:
                    async with asyncio.timeout(due - loop.time()):
                        await changed.wait()
                    continue
                except TimeoutError:
                    pass
            # Stay on schedule, but do not burst to catch up after a long stall.
            last = due if loop.time() - due < self._heartbeat_interval else loop.time()
            sent_at = timestamp_pb2.Timestamp()
            sent_at.GetCurrentTime()
            heartbeat = runner_pb2.Heartbeat(resources=self._ledger.snapshot(), sent_at=sent_at)
            await stream.send(runner_pb2.RunnerMessage(heartbeat=heartbeat))

    async def _reader_loop(self, stream: ControlStream) -> None:
        while True:
            message = await stream.receive()
            if message is None:
                return
            self._dispatch(message, stream)

    def _dispatch(self, message: runner_pb2.ControlMessage, stream: ControlStream) -> None:
        """Route one control message by its oneof.

        Commands pushed by the control plane will be added here. Each will run in its own task
        (tracked so the session can cancel them) so a slow command never stalls this loop, and
        will reply through ``stream.send``, which serialises writes with the heartbeats.
        """
        del stream  # used by command handlers once the protocol has commands
        kind = message.WhichOneof("message")
        if kind == "registered":
            # A repeated Registered lets the control plane change the heartbeat interval.
            self._apply_interval(message.registered)
            _log.debug("heartbeat interval now %.1fs", self._heartbeat_interval)
        else:
            _log.warning("runner %s ignoring unknown control message %r", self._runner_id, kind)
