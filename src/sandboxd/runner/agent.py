"""The runner agent: dial out to the control plane, register, heartbeat, redial forever.

Why it is shaped this way:

* **Runners only dial out** (DESIGN.md rule 2), so the agent owns the connection's lifetime:
  one long-lived ``Connect`` stream per session, a fresh channel per redial, the same runner
  id every time (see :mod:`sandboxd.runner.identity`) so the control plane recognises it.
* **Transient trouble is routine.** A control plane that restarts or is unreachable costs one
  log line and a jittered backoff, never a traceback or a crash.
* **Its own credential.** The first registration presents the join token (in call metadata,
  checked before any message is read); the control plane answers with a credential bound to
  this runner id, which the agent stores in its state directory (0600, see
  :mod:`sandboxd.runner.credentials`) and presents from then on, on every call including the
  per-exec and per-log streams. The join token is not needed again.
* **Rejection is final.** UNAUTHENTICATED or PERMISSION_DENIED (a bad or spent join token, a
  revoked credential, a runner id held by another runner) will not fix itself, so
  :meth:`RunnerAgent.run` raises :class:`RunnerRejectedError` instead of hammering the
  control plane.
* **One reader, many writers.** A single loop reads ``ControlMessage`` s and dispatches on
  ``WhichOneof("message")``: ``registered`` changes the heartbeat interval, ``command`` goes
  to the :class:`~sandboxd.runner.supervisor.SandboxSupervisor`, which runs each command in
  its own task. Writers (heartbeats, results, events) share the stream through
  :class:`~sandboxd.runner.stream.ControlStream`, which serialises them.
* **Sandboxes outlive connections.** The supervisor lives as long as the agent; each session
  lends it the current stream (events), and the session's
  :class:`~sandboxd.runner.operations.OperationPool` keeps idle ``Operate`` calls open on its
  channel for execs, logs and files. ``Register`` carries its snapshot, taken just before
  the register message claims the stream's write lock, so an event is either in the
  snapshot or sent after the register, never lost in between.
* **No backend, honest answers.** Without a backend the runner still joins (capacity and
  health are useful on their own) and answers every command with
  ``CWSANDBOX_BACKEND_UNAVAILABLE``. Its registration says so too: ``Capabilities`` lists
  every backend with whether it works and why not (``backend_statuses``, from the backend's
  own fingerprint), so the control plane never places a sandbox on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

import sandboxd
from sandboxd.identity.keyformat import SecretKind, mint
from sandboxd.runner.backoff import Backoff
from sandboxd.runner.capacity import allocatable_capabilities
from sandboxd.runner.cluster_id import load_cluster_id, save_cluster_id
from sandboxd.runner.connection_reports import forward_connection_attempts
from sandboxd.runner.credentials import (
    CREDENTIAL_FILE,
    PENDING_FILE,
    forget_pending,
    load_credential,
    save_credential,
)
from sandboxd.runner.exec_relay import OperateCall
from sandboxd.runner.failures import RUNNER_CAPACITY_EXHAUSTED, refuse_command, refuse_operation
from sandboxd.runner.fingerprint import (
    NOT_CONFIGURED,
    backend_status,
    fingerprint,
    unavailable_backend,
)
from sandboxd.runner.identity import resolve_runner_id
from sandboxd.runner.images import ImageList
from sandboxd.runner.operations import DEFAULT_IDLE_OPERATIONS, OperationPool
from sandboxd.runner.resources import ReservationLedger
from sandboxd.runner.sandbox_table import Send
from sandboxd.runner.settings import RunnerSettings
from sandboxd.runner.stream import (
    PROPOSED_CREDENTIAL_HEADER,
    ControlStream,
    RunnerChannel,
    bearer,
    open_channel,
)
from sandboxd_protocol.sandboxd_v1 import runner_pb2

if TYPE_CHECKING:
    from sandboxd.backends.base import Backend
    from sandboxd.runner.supervisor import SandboxSupervisor

__all__ = [
    "REJECTION_CODES",
    "NoCredentialError",
    "RunnerAgent",
    "RunnerRejectedError",
    "RunnerSettings",
]

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


class NoCredentialError(Exception):
    """The runner has neither a stored credential for its id nor a join token to get one."""


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

    With a ``backend`` the agent runs sandboxes: it recovers the backend's survivors when
    :meth:`run` starts, advertises the backend's fingerprint (whether it works, what it
    supports) and the ``images`` it can start, and keeps per-sandbox records under
    ``<state_dir>/sandboxes``. The caller owns the backend and closes it after :meth:`run`
    ends. ``unavailable_backends`` are backends the caller did not start, with the reason
    (e.g. ``local``: needs root); without a backend the runner advertises those, or that
    none is configured.

    ``link`` opens the runner's connection for each session instead of a gRPC channel: the
    in-process link of a control plane in this same process
    (:meth:`~sandboxd.controlplane.local_link.LocalRunners.channel`, used by ``sandboxd up``).
    Everything else, credentials and redials included, is the same on either.
    """

    def __init__(
        self,
        settings: RunnerSettings,
        ledger: ReservationLedger | None = None,
        capabilities: runner_pb2.Capabilities | None = None,
        *,
        on_registered: Callable[[runner_pb2.Registered], None] | None = None,
        backend: Backend | None = None,
        unavailable_backends: Sequence[runner_pb2.BackendStatus] = (),
        link: Callable[[], RunnerChannel] | None = None,
    ) -> None:
        self._settings = settings
        self._link = link
        self._address = settings.address
        self._capabilities = (
            capabilities
            if capabilities is not None
            else allocatable_capabilities(fingerprint(), settings.reserve)
        )
        self._ledger = (
            ledger
            if ledger is not None
            else ReservationLedger.from_capabilities(self._capabilities)
        )
        self._runner_id = resolve_runner_id(settings.runner_id, settings.state_dir)
        self._credential = load_credential(settings.state_dir, self._runner_id)
        self._proposal = ""  # the credential proposed by the join under way (see _propose)
        self._pending_tried = False  # the proposal of a join whose answer was lost, as bearer
        self._token_tried = False
        self._on_registered = on_registered
        self._heartbeat_interval = settings.heartbeat_interval
        # Created per session (an Event binds to the loop that first waits on it).
        self._interval_changed: asyncio.Event | None = None
        self._connected = False
        # Heartbeats carry the image list, so images built while connected become placeable.
        self._image_list = ImageList(backend.image_refs) if backend is not None else None
        self._disk_room = backend.disk_room_bytes if backend is not None else None
        self._stream: ControlStream | None = None
        self._channel: RunnerChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovered = False
        self._supervisor: SandboxSupervisor | None = None
        self._unavailable_backends = list(unavailable_backends)
        # What registrations say about backends; a backend's own entry comes from its
        # fingerprint, taken when run() starts.
        self._backend_statuses = list(unavailable_backends) or (
            [] if backend is not None else [unavailable_backend("local", NOT_CONFIGURED)]
        )
        if backend is not None:
            from sandboxd.runner.supervisor import SandboxSupervisor

            self._supervisor = SandboxSupervisor(
                backend,
                self._ledger,
                self._send_event,
                records_dir=settings.state_dir / "sandboxes",
                public_host=self._capabilities.hostname or None,
                control_plane=settings.control_plane,
                max_execs_per_sandbox=settings.max_execs_per_sandbox,
                max_concurrent_creates=settings.max_concurrent_creates,
                egress_blocked=settings.egress_blocked,
            )

    @property
    def runner_id(self) -> str:
        """The id this runner registers with, identical on every redial."""
        return self._runner_id

    @property
    def has_credential(self) -> bool:
        """Whether the runner holds its own credential (stored, or issued this session)."""
        return self._credential is not None

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
    def supervisor(self) -> SandboxSupervisor | None:
        """The sandboxes' supervisor, when the agent has a backend."""
        return self._supervisor

    @property
    def connected(self) -> bool:
        """True while registered on an open stream."""
        return self._connected

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: the control plane's choice once registered."""
        return self._heartbeat_interval

    async def run(self) -> None:
        """Stay connected until cancelled; raise :class:`RunnerRejectedError` if refused.

        Raises :class:`NoCredentialError` at once when there is nothing to authenticate with.
        """
        if self._credential is None and not self._settings.join_token:
            raise NoCredentialError(
                f"runner {self._runner_id} has no credential in "
                f"{self._settings.state_dir / CREDENTIAL_FILE} and no join token to get one: "
                "pass --join-token-file or set SANDBOXD_JOIN_TOKEN (sandboxd tokens create)"
            )
        try:
            await self._recover()
            if self._supervisor is not None:
                backend = self._supervisor.backend
                self._spawn(forward_connection_attempts(backend, self._send_event))
            await self._probe_backend()
            await self._run_sessions()
        finally:
            if self._supervisor is not None:
                await self._supervisor.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _recover(self) -> None:
        """Re-adopt sandboxes that outlived a previous runner process (once per agent)."""
        if self._supervisor is None or self._recovered:
            return
        self._recovered = True
        await self._supervisor.recover()

    async def _probe_backend(self) -> None:
        """Fingerprint the backend, so registrations say whether it works and what it can do."""
        if self._supervisor is None:
            return
        backend = self._supervisor.backend
        try:
            status = backend_status(await backend.fingerprint())
        except Exception as exc:  # a broken probe must not keep the runner from joining
            _log.exception(
                "runner %s: fingerprinting backend %s failed", self._runner_id, backend.name
            )
            status = unavailable_backend(backend.name, f"fingerprint failed: {exc}")
        if not status.available:
            _log.warning(
                "runner %s: backend %s is unavailable (%s); no sandbox will be placed here",
                self._runner_id,
                backend.name,
                status.reason,
            )
        self._backend_statuses = [status, *self._unavailable_backends]

    async def _run_sessions(self) -> None:
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
                    if self._after_refused_credential(details):
                        continue
                    _log.error(
                        "runner %s rejected by %s (%s: %s); check its %s",
                        self._runner_id,
                        settings.control_plane,
                        exc.code().name,
                        details,
                        "credential" if self._credential else "join token",
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
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancellation some await swallowed
            await asyncio.sleep(delay)

    def _after_refused_credential(self, details: str) -> bool:
        """What to dial with next after a refusal: True when there is something left to try.

        First the credential a token join proposed before this one was refused, if that
        join's answer was lost (the control plane may have bound it: it then works as is,
        even when the token has been used up since), then the join token.
        """
        if self._credential is None and self._token_tried:
            # The token's join itself was refused, and the refusal heard: the control plane
            # did not bind its proposal, which a later start must not try.
            with contextlib.suppress(OSError):
                forget_pending(self._settings.state_dir)
            self._proposal = ""
        if self._credential is None or self._pending_tried:
            return self._fall_back_to_join_token(details)
        self._pending_tried = True
        try:
            pending = load_credential(self._settings.state_dir, self._runner_id, PENDING_FILE)
        except ValueError:
            pending = None
        if pending is None or pending == self._credential:
            return self._fall_back_to_join_token(details)
        self._credential = pending
        _log.warning(
            "runner %s: credential refused (%s); trying the one its last join proposed",
            self._runner_id,
            details,
        )
        return True

    def _fall_back_to_join_token(self, details: str) -> bool:
        """After a refused credential, try the join token once, if the operator gave one.

        This is how an operator re-admits a runner whose credential was revoked or lost: a
        token pinned to its id (``sandboxd tokens create --runner-id``), without having to
        delete the credential file. The token is tried once per process.
        """
        if self._credential is None or not self._settings.join_token or self._token_tried:
            return False
        self._token_tried = True
        self._credential = None
        _log.warning(
            "runner %s: credential refused (%s); trying the join token", self._runner_id, details
        )
        return True

    async def _session(self) -> None:
        """One dial: register, then heartbeat and dispatch until the stream ends.

        Returns normally when the control plane ends the stream cleanly; raises on errors.
        Always cancels the call and closes the channel, including on cancellation.
        """
        channel = self._open_channel()
        stream: ControlStream | None = None
        try:
            joining = self._credential is None
            if joining and not self._proposal:
                self._proposal = self._propose()
            metadata = bearer(self._credential or self._settings.join_token)
            if joining and self._proposal:  # a secret: metadata, never a message
                metadata = (*metadata, (PROPOSED_CREDENTIAL_HEADER, self._proposal))
            stream = ControlStream(channel, metadata)
            # No await between the snapshot in the register message and the stream becoming
            # current: later events queue behind the register on the stream's write lock.
            register = runner_pb2.RunnerMessage(register=self._register_message())
            self._stream, self._channel = stream, channel
            await stream.send(register)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives just as the inner call fails, and the agent would then never stop.
            async with asyncio.timeout(self._settings.register_timeout):
                registered = await self._await_registered(stream)
            self._on_session_registered(registered)
            pool = OperationPool(
                channel,
                self._own_credential(),
                registered.connection_id,
                self._operate,
                registered.idle_operations or DEFAULT_IDLE_OPERATIONS,
            )
            operations = asyncio.create_task(pool.serve(), name="runner-operations")
            try:
                await self._pump(stream)
            finally:
                operations.cancel()
                await asyncio.gather(operations, return_exceptions=True)
        finally:
            if self._stream is stream:
                self._stream, self._channel = None, None
            if stream is not None:
                stream.cancel()
            await channel.close(None)

    def _open_channel(self) -> RunnerChannel:
        """A new channel for one session: the in-process link when given, else gRPC."""
        if self._link is not None:
            return self._link()
        return open_channel(
            self._address,
            keepalive_interval=self._settings.keepalive_interval,
            ca_file=self._settings.ca_file,
        )

    def _propose(self) -> str:
        """A credential to propose on joining, stored before the join is sent ("" if not).

        Why: the control plane binds the runner id to a credential the moment it accepts the
        join. A runner that died before storing a credential the control plane made was
        refused for good afterwards (its id "already holds a credential"), until an operator
        made a token pinned to it. Stored first, the credential survives any crash: if the
        join was accepted, the runner comes back with it; if not, the control plane refuses
        it and the runner joins again with its token (:meth:`_fall_back_to_join_token`). A
        redial in the same process after an unanswered join proposes the same one again,
        which the control plane accepts as a repeat. A control plane that ignores proposals
        answers with one of its own, which :meth:`_keep_credential` stores as before.

        After a refused credential the proposal goes beside it (``PENDING_FILE``), not over
        it, until the token's join succeeds, so a runner pointed at the wrong control plane
        keeps the credential of the right one; a pending proposal left by a join whose answer
        was lost is proposed again (the control plane takes a repeat as the same join).
        """
        state_dir, name = self._settings.state_dir, CREDENTIAL_FILE
        if self._token_tried:
            name = PENDING_FILE
            with contextlib.suppress(ValueError):
                if pending := load_credential(state_dir, self._runner_id, PENDING_FILE):
                    return pending
        proposal = mint(SecretKind.RUNNER_CREDENTIAL).text
        try:
            save_credential(state_dir, self._runner_id, proposal, name)
        except OSError as exc:
            _log.warning(
                "runner %s cannot store a credential before joining (%s); joining without one",
                self._runner_id,
                exc,
            )
            return ""
        return proposal

    def _register_message(self) -> runner_pb2.Register:
        capabilities = runner_pb2.Capabilities()
        capabilities.CopyFrom(self._capabilities)
        capabilities.ClearField("backend_statuses")
        capabilities.backend_statuses.extend(self._backend_statuses)
        capabilities.backends[:] = [s.name for s in self._backend_statuses if s.available]
        sandboxes: list[runner_pb2.SandboxEvent] = []
        if self._supervisor is not None:
            images = self._image_list.current(fresh=True) if self._image_list else []
            capabilities.images[:] = images
            sandboxes = self._supervisor.snapshot()
        return runner_pb2.Register(
            runner_id=self._runner_id,
            runner_group_id=self._settings.runner_group_id,
            tags=list(self._settings.tags),
            capabilities=capabilities,
            version=sandboxd.__version__,
            resources=self._resources(),
            sandboxes=sandboxes,
            cluster_id=load_cluster_id(self._settings.state_dir),
        )

    async def _send_event(self, message: runner_pb2.RunnerMessage) -> None:
        """Send on whichever stream is current (events are not tied to one connection)."""
        stream = self._stream
        if stream is None:
            raise ConnectionError("not connected to the control plane")
        await stream.send(message)

    async def _operate(self, first: runner_pb2.OperationDown, call: OperateCall) -> None:
        """An operation the control plane bound to one of this session's idle streams."""
        if self._supervisor is not None:
            await self._supervisor.operate(first, call)
        else:
            why = "this runner has no sandbox backend (run it with --backend local, as root)"
            await refuse_operation(first, call, why)

    def _own_credential(self) -> str:
        if self._credential is None:
            raise ConnectionError("not registered with the control plane yet")
        return self._credential

    async def _await_registered(self, stream: ControlStream) -> runner_pb2.Registered:
        message = await stream.receive()
        if message is None:
            raise ProtocolError("control plane ended the stream before answering register")
        if message.WhichOneof("message") != "registered":
            raise ProtocolError(
                f"expected 'registered', got {message.WhichOneof('message')!r} first"
            )
        return message.registered

    def _keep_credential(self, credential: str) -> None:
        """Use the credential issued on joining from now on, and store it for restarts.

        It is kept in memory even if it cannot be written, so this process keeps working;
        the error says that the next start will need a token pinned to this runner id.
        """
        self._credential = credential
        try:
            path = save_credential(self._settings.state_dir, self._runner_id, credential)
        except OSError as exc:
            _log.error(
                "runner %s joined but cannot store its credential (%s); after a restart it "
                "needs a join token pinned to its id (sandboxd tokens create --runner-id %s)",
                self._runner_id,
                exc,
                self._runner_id,
            )
            return
        _log.info("runner %s joined; its credential is stored in %s", self._runner_id, path)

    def _on_session_registered(self, registered: runner_pb2.Registered) -> None:
        self._proposal = ""  # joined (or registered with a credential): nothing is pending
        if registered.credential:
            self._keep_credential(registered.credential)
        elif self._pending_tried and self._credential is not None:
            self._keep_credential(self._credential)  # the pending one was bound: it is ours
            self._pending_tried = False  # stored once; later redials need not store it again
        with contextlib.suppress(OSError):
            forget_pending(self._settings.state_dir)
        if registered.cluster_id and registered.cluster_id != load_cluster_id(
            self._settings.state_dir
        ):
            try:
                save_cluster_id(self._settings.state_dir, registered.cluster_id)
            except OSError as exc:
                _log.warning("cannot store the cluster id in %s: %s", self._settings.state_dir, exc)
        self._apply_interval(registered)
        self._apply_overcommit(registered)
        if self._supervisor is not None:
            self._supervisor.configure_warm_pools(registered.warm_pools)
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

    def _apply_overcommit(self, registered: runner_pb2.Registered) -> None:
        """Admit requests up to what the control plane's configuration allows this runner."""
        self._ledger.set_overcommit(
            registered.cpu_overcommit_ratio, registered.memory_overcommit_ratio
        )

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

    def _resources(self) -> runner_pb2.Resources:
        """Live resources for a registration or heartbeat, with the backend's disk room.

        Why the room: the control plane counts CPU, memory and GPUs, not disk; a runner whose
        disk is full failed every Start placed on it (``Backend.disk_room_bytes``).
        """
        resources = self._ledger.snapshot()
        room = self._disk_room() if self._disk_room is not None else None
        if room is not None:
            resources.disk_room_bytes = room
        return resources

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
            await stream.send(await self._heartbeat(list_images=True))

    async def _heartbeat(self, *, list_images: bool) -> runner_pb2.RunnerMessage:
        """A heartbeat as it is now; ``list_images``: with the image list (else kept as is)."""
        sent_at = timestamp_pb2.Timestamp()
        sent_at.GetCurrentTime()
        heartbeat = runner_pb2.Heartbeat(resources=self._resources(), sent_at=sent_at)
        if self._supervisor is not None:
            heartbeat.warm_pools.extend(self._supervisor.warm_pool_states())
        if list_images and self._image_list is not None:
            heartbeat.images[:] = await self._image_list.refreshed()
            heartbeat.images_listed = True
        return runner_pb2.RunnerMessage(heartbeat=heartbeat)

    def _replies_on(self, stream: ControlStream) -> Send:
        """Send a command's result on ``stream``, after a heartbeat if the runner was full.

        A start refused for want of room (``RUNNER_CAPACITY_EXHAUSTED``) goes out behind a
        heartbeat. Why: the failure alone tells placement nothing about the runner's room;
        its regular heartbeat (every 2 s by default) or the start backoff (after three
        failures) did, and every Start placed here meanwhile failed too. The heartbeat
        carries the room left (``Resources.disk_room_bytes``), and on one stream it reaches
        the control plane before the failure does, so the Start a client sends after seeing
        the failure is already placed elsewhere.
        """

        async def reply(message: runner_pb2.RunnerMessage) -> None:
            if message.result.failure.reason == RUNNER_CAPACITY_EXHAUSTED:
                await stream.send(await self._heartbeat(list_images=False))
            await stream.send(message)

        return reply

    async def _reader_loop(self, stream: ControlStream) -> None:
        while True:
            message = await stream.receive()
            if message is None:
                return
            self._dispatch(message, stream)

    def _dispatch(self, message: runner_pb2.ControlMessage, stream: ControlStream) -> None:
        """Route one control message by its oneof; never blocks the reader loop.

        A command runs in its own task and its result goes back on ``stream``, the connection
        it came on (request ids are only unique per connection).
        """
        kind = message.WhichOneof("message")
        if kind == "registered":
            # A repeated Registered carries the control plane's new settings: the heartbeat
            # interval, and after `sandboxd config apply` overcommit ratios and warm pools
            # (always the whole list: a pool left out is no longer wanted).
            self._apply_interval(message.registered)
            self._apply_overcommit(message.registered)
            if self._supervisor is not None:
                self._supervisor.configure_warm_pools(message.registered.warm_pools)
            _log.debug("heartbeat interval now %.1fs", self._heartbeat_interval)
        elif kind == "command":
            if self._supervisor is not None:
                self._supervisor.handle(message.command, reply=self._replies_on(stream))
            else:
                why = "this runner has no sandbox backend (run it with --backend local, as root)"
                self._spawn(refuse_command(message.command, stream.send, why))
        else:
            _log.warning("runner %s ignoring unknown control message %r", self._runner_id, kind)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
