"""Every sandbox's ordered history, written by the control plane from what it saw itself.

Why from two narrow points and nothing inside the sandbox: a trail that the sandbox could
write to would be worthless as evidence. So the control plane writes it from

* every change of a sandbox's record (:meth:`EventLog.observe_record`, chained onto the
  records' ``on_change`` like the metrics): placed, running, paused, resumed, stopping, ended
  (status, exit code, reason: an OOM kill says so), deleted;
* every public call on a sandbox, v1beta2 or v1 (:class:`EventsInterceptor`, inside the
  authentication interceptor so it knows who asked): each exec (argv, environment names,
  TTY, exit code, duration, the caller's key id), each file written or read through the API
  (path, size, SHA-256), each snapshot, and each stop, delete, pause and resume request;

and appends what a runner reports from its host firewall (``connection_events.py``: each
outbound connection attempt, checked to be one of that runner's sandboxes).

Events are queued and written in batches off the event loop (:data:`FLUSH_SECONDS`), read
back in order (``seq``), followed live, and kept for the retention of ended sandboxes, also
after the sandbox is deleted. Only the owner's organization (and admins) can read them; for
anyone else the sandbox looks missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from sandboxd.controlplane.caller import Caller, current_caller
from sandboxd.controlplane.event_journal import EventJournal
from sandboxd.controlplane.sandbox_model import (
    STARTING_STATUSES,
    TERMINAL_STATUSES,
    Desired,
    SandboxRecord,
)
from sandboxd.controlplane.sandbox_records import SandboxRecords
from sandboxd.errors import ApiError
from sandboxd.log_format import bind_sandbox
from sandboxd.store.event_store import EventStore, SandboxEvent
from sandboxd_protocol.sandboxd_v1 import files_pb2

__all__ = ["EventLog", "EventsInterceptor"]

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
ENDED_REMEMBERED = 65_536
"""Ended sandboxes whose state is remembered for their delete event (oldest forgotten)."""
INLINE_HASH_BYTES = 64 << 10
"""File content up to this size is hashed at once; larger, in a worker thread."""
MAX_PENDING = 100_000
"""Events held while the database is away; past this the oldest are dropped, with a warning."""
CONTROL_PLANE = "control-plane"
STATUS_NAMES = {1: "creating", 2: "running", 3: "completed", 4: "failed", 5: "terminated",
                6: "pending", 7: "paused", 9: "terminating"}  # fmt: skip
PAUSED = 7
RUNNING = 2
SHOWN_KINDS = {"running": RUNNING, "resumed": RUNNING, "paused": PAUSED}
"""Trail events that may be noted before their record is stored, and the status they mean."""
GATEWAY = "/coreweave.sandbox.v1beta2.GatewayService/"
FILES = "/sandboxd.files.v1.FileService/"
V1_SANDBOXES = "/coreweave.sandbox.v1.SandboxService/"
M = TypeVar("M", bound=Message)
STREAMING = "/coreweave.sandbox.v1beta2.GatewayStreamingService/"


@dataclass
class _Seen:
    status: int
    desired: Desired
    runner_id: str = ""


class EventLog:
    """Queues events, writes them in batches, and serves them in order."""

    def __init__(
        self, store: EventStore, records: SandboxRecords, journal: EventJournal | None = None
    ) -> None:
        """``journal``: where events wait, safe from a kill, until stored (None: memory)."""
        self._store = store
        self._records = records
        self._journal = journal
        self._pending: list[SandboxEvent] = []
        # Each pending event's journal number (by id()), in trail order.
        self._numbers: dict[int, int] = {}
        self._next_number = 1
        # Events whose file digest is still being computed (by id()): flushed after it.
        self._hashing: dict[int, asyncio.Future[None]] = {}
        self._seen: dict[str, _Seen] = {}
        # Ended sandboxes still to be deleted, oldest first; bounded, so memory is too.
        self._ended: OrderedDict[str, _Seen] = OrderedDict()
        self._written = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # -- writing ------------------------------------------------------------------------

    def note(
        self,
        record: SandboxRecord,
        kind: str,
        actor: str,
        hash_of: bytes | None = None,
        **data: Any,
    ) -> None:
        """Queue an event of ``record``'s sandbox (never blocks, never raises).

        It is also logged at INFO (with ``--log-format json``, with the sandbox and the
        caller's organization on the line), but the trail, not the log, is the record.
        """
        log.info("sandbox %s: %s by %s", record.sandbox_id, kind, actor)
        event = SandboxEvent(
            record.sandbox_id, record.owner_org, datetime.now(UTC), kind, actor, data
        )
        if hash_of is not None:
            self._hash_later(event, hash_of)  # before append: journaled once complete
        self.append(event)

    def _hash_later(self, event: SandboxEvent, content: bytes) -> None:
        """Add ``sha256`` of ``content`` to ``event``, off the event loop for large content.

        Why: hashing 16 MiB takes ~25 ms, which on the loop would stall every other call and
        delay the file's own answer. The event keeps its place: :meth:`flush` writes events
        only up to the first one still being hashed, so the trail stays in order.
        """
        if len(content) <= INLINE_HASH_BYTES:
            event.data["sha256"] = hashlib.sha256(content).hexdigest()
            return

        async def digest() -> None:
            try:  # hashlib releases the GIL for large buffers: another core does the work
                event.data["sha256"] = await asyncio.to_thread(
                    lambda: hashlib.sha256(content).hexdigest()
                )
            finally:
                self._hashing.pop(id(event), None)
                number = self._numbers.get(id(event))
                if self._journal is not None and number is not None:
                    self._journal.write(number, event)
                self._wake.set()

        self._hashing[id(event)] = asyncio.ensure_future(digest())

    def append(self, event: SandboxEvent) -> None:
        """Queue a ready-made event (never blocks, never raises); see :meth:`note`.

        It is journaled at once (when complete: a digest being computed journals it when
        done), so a kill before the next database write loses nothing.
        """
        number, self._next_number = self._next_number, self._next_number + 1
        self._numbers[id(event)] = number
        self._pending.append(event)
        if self._journal is not None and id(event) not in self._hashing:
            self._journal.write(number, event)
        if len(self._pending) > MAX_PENDING:
            dropped = self._pending[: len(self._pending) - MAX_PENDING]
            del self._pending[: len(dropped)]
            for old in dropped:
                self._numbers.pop(id(old), None)
            log.warning("event trail: the database is behind; oldest pending events dropped")
        self._wake.set()

    def seed(self, records: Iterable[SandboxRecord]) -> None:
        """At start-up: what the loaded records already are, before anything changes.

        Why: the trail notes transitions, from what it saw last. A restarted control plane
        has seen nothing, so each sandbox's first change after a restart was read as a new
        sandbox: "running" noted a second time, and the change itself ("stopping",
        "deleted") not at all. Call after the records loaded and before :meth:`recover`.
        """
        for record in records:
            seen = _Seen(record.status, record.desired, record.runner_id)
            if record.status not in TERMINAL_STATUSES:
                self._seen.setdefault(record.sandbox_id, seen)
            elif record.desired is not Desired.DELETED:
                self._ended.setdefault(record.sandbox_id, seen)
        while len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    async def _seed_shown(self) -> None:
        """Sandboxes whose stored record still says starting, but whose trail says more.

        A runner's RUNNING is noted when shown, before its record is stored
        (:meth:`observe_shown`); a control plane killed in between has it in the trail (or
        its journal) but not in the record. What the trail last said is what it has seen,
        so the report that follows the restart is not noted again. Only records loaded as
        starting are looked up: a few at most, the ones in flight at the kill.
        """
        starting = [sid for sid, seen in self._seen.items() if seen.status in STARTING_STATUSES]
        for sandbox_id in starting:
            kind = await asyncio.to_thread(self._store.latest_kind, sandbox_id, tuple(SHOWN_KINDS))
            seen = self._seen.get(sandbox_id)
            if kind is not None and seen is not None and seen.status in STARTING_STATUSES:
                seen.status = SHOWN_KINDS[kind]

    async def recover(self) -> int:
        """At start-up: store what the journal holds beyond the database; how many events.

        Also opens the journal for this run, numbering on from the highest number seen,
        and learns what the trail said last of sandboxes stored as starting
        (:meth:`_seed_shown`).
        """
        if self._journal is None:
            await self._seed_shown()
            return 0
        position = await asyncio.to_thread(self._store.journal_position)
        entries = await asyncio.to_thread(self._journal.read)
        missing = [(number, event) for number, event in entries if number > position]
        highest = max([position, *(number for number, _ in entries)])
        if missing:
            events = [event for _, event in missing]
            await asyncio.to_thread(self._store.append, events, missing[-1][0])
            log.info("event trail: %d events from the journal stored after a restart", len(events))
        self._journal.open()
        self._journal.stored_through(highest, everything=True)
        self._next_number = highest + 1
        for event in self._pending:  # noted while the records loaded: number them on
            self._numbers[id(event)] = self._next_number
            if id(event) not in self._hashing:
                self._journal.write(self._next_number, event)
            self._next_number += 1
        await self._seed_shown()
        return len(missing)

    def observe_record(self, record: SandboxRecord) -> None:
        """Turn a record change into lifecycle events (each transition once)."""
        self._observe(record, shown=False)

    def observe_shown(self, record: SandboxRecord) -> None:
        """A change shown before it is stored (a runner's RUNNING report): noted now.

        Why: a client that saw RUNNING may exec at once, and its exec must follow
        "running" in the trail even when the write is slow. The stored record that follows
        notes nothing more. Its version is still the stored one's, so "placed" is left to
        the insert (a record reloaded after a restart was placed before it).
        """
        self._observe(record, shown=True)

    def _observe(self, record: SandboxRecord, shown: bool) -> None:
        sandbox_id, status, desired = record.sandbox_id, record.status, record.desired
        before = self._seen.get(sandbox_id) or self._ended.get(sandbox_id)
        if before is None and status in TERMINAL_STATUSES and record.version > 1 and not shown:
            # Ended before this process saw it (every live record is seeded at start-up,
            # see seed()): loaded as ended, or forgotten from _ended. Its "ended" is in the
            # trail already; only its delete can be news.
            before = _Seen(status, Desired.STOPPED)
        if before is None and record.version == 1 and not shown:
            self.note(
                record,
                "placed",
                CONTROL_PLANE,
                runner_id=record.runner_id,
                profile=record.profile_name,
                image=record.image,
            )
        runner = f"runner:{record.runner_id}"
        if before is not None and before.runner_id and before.runner_id != record.runner_id:
            # Its first runner failed the start (start_moves.py).
            self.note(
                record,
                "moved",
                CONTROL_PLANE,
                runner_id=record.runner_id,
                from_runner_id=before.runner_id,
            )
        if before is None or before.status != status:
            if status == 2:
                kind = "resumed" if before is not None and before.status == PAUSED else "running"
                self.note(record, kind, runner, runner_id=record.runner_id)
            elif status == PAUSED:
                self.note(record, "paused", runner)
            elif status in TERMINAL_STATUSES and (
                before is None or before.status not in TERMINAL_STATUSES
            ):
                self.note(
                    record,
                    "ended",
                    runner,
                    status=STATUS_NAMES[status],
                    exit_code=record.exit_code,
                    reason=record.status_reason,
                )
        if before is not None and before.desired != desired:
            if desired is Desired.STOPPED:
                self.note(
                    record, "stopping", CONTROL_PLANE, grace_seconds=record.stop_grace_seconds
                )
            elif desired is Desired.DELETED:
                self.note(record, "deleted", CONTROL_PLANE)
        if status not in TERMINAL_STATUSES:
            self._seen[sandbox_id] = _Seen(status, desired, record.runner_id)
            return
        self._seen.pop(sandbox_id, None)
        if desired is Desired.DELETED:
            self._ended.pop(sandbox_id, None)
            return
        self._ended[sandbox_id] = _Seen(status, desired)  # its delete may still come
        if len(self._ended) > ENDED_REMEMBERED:
            self._ended.popitem(last=False)

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="event-trail-writer")

    async def stop(self) -> None:
        """Write what is pending and stop."""
        if self._hashing:
            await asyncio.gather(*self._hashing.values(), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        if self._journal is not None:
            self._journal.close()  # what the flush could not store stays for the next start

    async def flush(self) -> None:
        """Write every pending event now (in order), then wake followers."""
        async with self._lock:
            ready = len(self._pending)
            for index, event in enumerate(self._pending):
                if id(event) in self._hashing:
                    ready = index  # it and everything after it wait for its digest
                    break
            batch, self._pending = self._pending[:ready], self._pending[ready:]
            if not batch:
                return
            through = self._numbers.get(id(batch[-1]))
            try:
                await asyncio.to_thread(self._store.append, batch, through)
            except Exception:
                self._pending[:0] = batch  # kept, in order, for the next flush
                raise
            for event in batch:
                self._numbers.pop(id(event), None)
            if self._journal is not None and through is not None:
                self._journal.stored_through(through, everything=not self._pending)
        written, self._written = self._written, asyncio.Event()
        written.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # the database is away: retry on the next round
                log.warning("event trail: writing events failed (%s); will retry", exc)
            await asyncio.sleep(FLUSH_SECONDS)

    async def collect(self, before: datetime) -> int:
        """Delete events older than ``before`` (the retention of ended sandboxes)."""
        return await asyncio.to_thread(self._store.collect, before)

    # -- reading ------------------------------------------------------------------------

    async def page(self, sandbox_id: str, after_seq: int, limit: int) -> list[SandboxEvent]:
        """Events of a sandbox after ``after_seq``, oldest first (pending ones written first).

        A flush under way holds its batch outside ``_pending`` until the database has it,
        so a read then waits for that flush too (``flush`` takes the same lock): else an
        event noted just before, say a snapshot's, was missing from a read right after.
        """
        if self._lock.locked() or any(e.sandbox_id == sandbox_id for e in self._pending):
            await self.flush()
        return await asyncio.to_thread(self._store.page, sandbox_id, after_seq, limit)

    async def follow(
        self, sandbox_id: str, after_seq: int, page_size: int = 500
    ) -> AsyncIterator[SandboxEvent]:
        """Every event after ``after_seq``, then new ones as they are written, forever."""
        while True:
            waiter = self._written
            found = await self.page(sandbox_id, after_seq, page_size)
            for event in found:
                after_seq = event.seq
                yield event
            if len(found) < page_size:
                await waiter.wait()


def _actor(caller: Caller | None) -> str:
    return f"api-key:{caller.key_id}" if caller is not None else "unknown"


def _caller() -> Caller | None:
    try:
        return current_caller()
    except ApiError:
        return None


class EventsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Records execs, file transfers and lifecycle requests on the sandboxes they touch."""

    def __init__(self, events: EventLog, records: SandboxRecords) -> None:
        self._events = events
        self._records = records

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the calls that act on one sandbox; every other call passes untouched."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None:
            return handler
        if method in _EXEC_ONEOFS and handler.stream_stream:
            wrapped = self._exec(handler.stream_stream, *_EXEC_ONEOFS[method])
            return handler._replace(stream_stream=wrapped)  # type: ignore[attr-defined,no-any-return]
        if method == FILES + "WriteFile" and handler.stream_unary:
            return handler._replace(stream_unary=self._stream_write(handler.stream_unary))  # type: ignore[attr-defined,no-any-return]
        if method == FILES + "ReadFile" and handler.unary_stream:
            return handler._replace(unary_stream=self._stream_read(handler.unary_stream))  # type: ignore[attr-defined,no-any-return]
        name = method.removeprefix(GATEWAY).removeprefix(V1_SANDBOXES)
        known = method.startswith((GATEWAY, V1_SANDBOXES)) and name in {**_UNARY, **_REQUESTS}
        if known and handler.unary_unary:
            return handler._replace(unary_unary=self._unary(name, handler.unary_unary))  # type: ignore[attr-defined,no-any-return]
        return handler

    def _record(self, sandbox_id: str, caller: Caller | None) -> SandboxRecord | None:
        """The sandbox, if the caller may see it (nobody writes into another org's trail)."""
        record = self._records.cached(sandbox_id)
        if record is None or caller is None or not caller.can_see(record.owner_org):
            return None
        return record

    def _exec(self, behaviour: Any, request_oneof: str, response_oneof: str) -> Any:
        """StreamExec of either protocol (their oneofs are named differently)."""
        events = self

        async def run(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            seen: dict[str, Any] = {}
            started = time.perf_counter()

            async def watched() -> AsyncIterator[Any]:
                async for request in requests:
                    if request.WhichOneof(request_oneof) == "init" and not seen:
                        seen["init"] = request.init
                        bind_sandbox(request.init.sandbox_id)
                    yield request

            noted = False

            def note(exit_code: int | None) -> None:
                nonlocal noted
                init = seen.get("init")
                caller = _caller()
                record = events._record(init.sandbox_id, caller) if init is not None else None
                if noted or record is None or init is None:
                    return
                noted = True
                events._events.note(
                    record,
                    "exec",
                    _actor(caller),
                    argv=list(init.command),
                    env_names=sorted(init.env),
                    tty=init.tty,
                    exit_code=exit_code,
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                )

            try:
                async for response in behaviour(watched(), context):
                    if response.WhichOneof(response_oneof) == "exit":
                        # Before the client sees the exit: an answered exec is in the
                        # trail (journaled), even if this process dies a moment later.
                        note(response.exit.exit_code)
                    yield response
            finally:
                note(None)  # it ended without an exit (an error, the client went away)

        return run

    def _stream_write(self, behaviour: Any) -> Any:
        """``FileService.WriteFile``: path and size (file bytes pass unread and unhashed)."""
        events = self

        async def run(requests: AsyncIterator[Any], context: Any) -> Any:
            seen: dict[str, Any] = {}

            async def watched() -> AsyncIterator[Any]:
                async for frame in requests:
                    if not seen:
                        seen["first"] = _parsed(files_pb2.WriteFileRequest, frame)
                    yield frame

            response = None
            try:
                response = await behaviour(watched(), context)
                return response
            finally:
                first = seen.get("first")
                caller = _caller()
                if first is not None and first.WhichOneof("frame") == "init":
                    init = first.init
                    record = events._record(init.sandbox_id, caller)
                    if record is not None:
                        data: dict[str, Any] = {"path": init.path, "streamed": True}
                        if response is not None:
                            data["size"] = _parsed(files_pb2.WriteFileResponse, response).size
                        data["outcome"] = "ok" if response is not None else "error"
                        events._events.note(record, "file_written", _actor(caller), **data)

        return run

    def _stream_read(self, behaviour: Any) -> Any:
        """``FileService.ReadFile``: path and size (file bytes pass unread and unhashed)."""
        events = self

        async def run(request: Any, context: Any) -> AsyncIterator[Any]:
            parsed = _parsed(files_pb2.ReadFileRequest, request)
            size: int | None = None
            first = True
            try:
                async for frame in behaviour(request, context):
                    if first:
                        first = False
                        reply = _parsed(files_pb2.ReadFileResponse, frame)
                        if reply.WhichOneof("frame") == "info":
                            size = reply.info.size
                    yield frame
            finally:
                caller = _caller()
                record = events._record(parsed.sandbox_id, caller)
                if record is not None:
                    data: dict[str, Any] = {"path": parsed.path, "streamed": True, "size": size}
                    events._events.note(record, "file_read", _actor(caller), **data)

        return run

    def _unary(self, name: str, behaviour: Any) -> Any:
        events = self

        async def run(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            response, outcome = None, "error"
            bind_sandbox(getattr(request, "sandbox_id", ""))
            if name in _REQUESTS:  # the wish, when it is made: before what it causes
                caller = _caller()
                record = events._record(getattr(request, "sandbox_id", ""), caller)
                if record is not None:
                    kind, data = _REQUESTS[name](request)
                    events._events.note(record, kind, _actor(caller), **data)
                return await behaviour(request, context)
            try:
                response = await behaviour(request, context)
                outcome = "ok"
                return response
            finally:
                caller = _caller()
                record = events._record(getattr(request, "sandbox_id", ""), caller)
                if record is not None:
                    kind, data, content = _UNARY[name](request, response)
                    data.update(outcome=outcome)
                    if name == "Exec":
                        data["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
                    events._events.note(record, kind, _actor(caller), hash_of=content, **data)

        return run


def _parsed(kind: type[M], frame: Any) -> M:
    """A frame as ``kind``: raw file-service frames arrive as bytes (raw_frames.py)."""
    if isinstance(frame, kind):
        return frame
    try:
        return kind.FromString(bytes(frame))
    except Exception:  # not ours to judge: the service itself refuses a bad frame
        return kind()


# What a finished call records: its kind, its details, and file content to add the SHA-256
# of (``EventLog.note(hash_of=...)``; None when there is none).
Recorded = tuple[str, dict[str, Any], bytes | None]


def _file_written(request: Any, _response: Any) -> Recorded:
    content = request.file_contents
    return "file_written", {"path": request.filepath, "size": len(content)}, content


def _file_read(request: Any, response: Any) -> Recorded:
    if response is None:
        return "file_read", {"path": request.filepath}, None
    content = response.file_contents
    return "file_read", {"path": request.filepath, "size": len(content)}, content


def _unary_exec(request: Any, response: Any) -> Recorded:
    data: dict[str, Any] = {"argv": [*request.command, *request.args]}
    if response is not None and response.HasField("result"):
        data["exit_code"] = response.result.exit_code
    return "exec", data, None


def _v1_file_written(request: Any, _response: Any) -> Recorded:
    content = request.content
    return "file_written", {"path": request.path, "size": len(content)}, content


def _v1_file_read(request: Any, response: Any) -> Recorded:
    if response is None:
        return "file_read", {"path": request.path}, None
    return "file_read", {"path": request.path, "size": len(response.content)}, response.content


# StreamExec of each protocol: (request oneof, response oneof).
_EXEC_ONEOFS = {
    STREAMING + "StreamExec": ("request", "response"),
    V1_SANDBOXES + "StreamExec": ("message", "message"),
}
# Calls recorded when they end, with their outcome (v1beta2 and v1 names) ...
_UNARY: dict[str, Callable[[Any, Any], Recorded]] = {
    "AddFile": _file_written,
    "RetrieveFile": _file_read,
    "Exec": _unary_exec,
    "WriteFile": _v1_file_written,
    "ReadFile": _v1_file_read,
    "CreateFileSystemSnapshot": lambda _r, resp: (
        "snapshot",
        {"snapshot_id": resp.file_system_snapshot_id} if resp is not None else {},
        None,
    ),
}
# ... and requests recorded when they are made (what they cause follows as its own events).
_REQUESTS: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {
    "Stop": lambda r: ("stop_requested", {"grace_seconds": r.graceful_shutdown_seconds}),
    "Delete": lambda _r: ("delete_requested", {}),
    "Pause": lambda _r: ("pause_requested", {}),
    "Resume": lambda _r: ("resume_requested", {}),
    "DeleteSandbox": lambda r: ("delete_requested", {"grace_seconds": r.grace_period_seconds}),
}
