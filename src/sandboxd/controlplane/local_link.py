"""The in-process runner link: a runner in the control plane's own process, without gRPC.

Why: in ``sandboxd up`` the control plane and its runner share one process and one event
loop, yet every exec and every file byte used to cross the runner protocol over loopback
HTTP/2: serialised, framed, flow-controlled and parsed again, in Python, twice per hop. This
link hands the same runner-protocol messages over bounded in-memory pipes instead, and drives
the same :class:`~sandboxd.controlplane.runner_service.RunnerService` handlers (``Connect``,
``Operate``) that serve remote runners. So registration, the registry, the reconciler,
operations and the file relay are the very code a remote runner meets; only the transport
differs. Remote runners keep the gRPC link.

**Identity.** Each call carries the same metadata a gRPC call would (the runner's
``authorization`` bearer, ``sandboxd-connection``), and the server's own authentication
(:meth:`~sandboxd.controlplane.auth.AuthInterceptor.identify`) resolves it and binds it to
the call before the handler runs, as the interceptor does for a gRPC call. A runner of this
process therefore still joins with a token, holds its own credential and is refused exactly
as a remote one would be.

**Call semantics** follow ``grpc.aio`` where the runner relies on them: :meth:`LocalCall.read`
returns :data:`grpc.aio.EOF` at a clean end and raises :class:`grpc.aio.AioRpcError` with the
handler's status otherwise (an abort keeps its code, message and rich-status trailers); a
write after the end raises :class:`asyncio.InvalidStateError` (OK end) or the error;
:meth:`LocalCall.cancel` cancels the handler's task, which then sees ``CancelledError`` where
it waits, as a gRPC handler does when its client cancels. Closing the link (the control plane
stops) ends every call with UNAVAILABLE, and new calls are refused the same way.

**Memory and copies.** Each direction of a call is a :class:`~sandboxd.controlplane.pipe.Pipe`
of a few frames; a full pipe makes the writer wait, as HTTP/2 flow control would, so a
transfer holds a few frames whatever its size. Messages are handed over, not serialised; file
data frames cross as the encodings the client sent and the client receives
(:data:`LocalCall.encoded_data`), so a file byte is copied once on its way through the
server instead of four times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from sandboxd.controlplane.caller import Identity, bind
from sandboxd.controlplane.pipe import Pipe
from sandboxd.errors import ApiError, status_trailers

log = logging.getLogger(__name__)

SERVICE = "/sandboxd.runner.v1.RunnerService/"
CONNECT_FRAMES = 64
"""Control messages waiting in each direction of a ``Connect`` call (commands, results)."""
OPERATE_FRAMES = 4
"""Frames waiting in each direction of an ``Operate`` call (file frames are up to 1 MiB)."""

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (the type stubs do not export it)
Metadata = tuple[tuple[str, str], ...]
Identify = Callable[[str, Metadata], Awaitable[Identity]]
Handler = Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]]


class _Aborted(Exception):
    """Raised by :meth:`LocalContext.abort`, as ``grpc.aio`` raises its own abort error."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Metadata) -> None:
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers


class _End:
    """The status a call ended with, queued after its last response."""

    __slots__ = ("error",)

    def __init__(self, error: grpc.aio.AioRpcError | None) -> None:
        self.error = error


def rpc_error(code: grpc.StatusCode, details: str, trailers: Any = ()) -> grpc.aio.AioRpcError:
    """The error a runner's read raises, shaped as ``grpc.aio`` shapes it."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details, None
    )


class LocalContext:
    """What the runner-protocol handlers use of a servicer context: metadata and abort."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Metadata:
        """The call's metadata, as the runner sent it."""
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        """End the call with ``code`` (raises, as ``grpc.aio`` does)."""
        raise _Aborted(code, details, tuple(trailing_metadata))


class LocalCall:
    """One runner-protocol call between a runner and a handler of this process.

    The runner's side is the subset of ``grpc.aio.StreamStreamCall`` it uses: :meth:`read`,
    :meth:`write`, :meth:`done_writing`, :meth:`cancel`. The handler runs in a task of its
    own, with the caller's identity bound to it.
    """

    encoded_data = True
    """Data frames may cross encoded, as ``bytes`` (:mod:`sandboxd.runner.file_frames`)."""

    def __init__(
        self,
        link: LocalRunnerLink,
        method: str,
        *,
        handler: Handler,
        metadata: Metadata,
        capacity: int,
        copy_down: bool,
    ) -> None:
        self._link = link
        self._up: Pipe[Any] = Pipe(capacity)  # the runner's messages; None ends them
        self._down: Pipe[Any] = Pipe(capacity)  # the handler's responses, then an _End
        self._copy_down = copy_down
        self._ended: _End | None = None  # set when the runner has read the end
        self._finished: _End | None = None  # set when the handler is done
        self._task = asyncio.get_running_loop().create_task(
            self._serve(method, handler, metadata), name=f"local-{method.rsplit('/', 1)[-1]}"
        )

    # -- the runner's side ------------------------------------------------------------------
    async def read(self) -> Any:
        """The handler's next response; :data:`grpc.aio.EOF` after an OK end, else raises."""
        end = self._ended
        if end is None:
            item = await self._down.get()
            if not isinstance(item, _End):
                return _as_message(item) if self._copy_down else item
            self._ended = end = item
        if end.error is not None:
            raise end.error
        return EOF

    async def write(self, message: Any) -> None:
        """Hand ``message`` to the handler, waiting while it has ``capacity`` unread."""
        self._check_open()
        await self._up.put(message)
        self._check_open()

    async def done_writing(self) -> None:
        """The runner sends no more (the handler's request iterator ends)."""
        if self._finished is None:
            self._up.put_now(None)

    def cancel(self) -> bool:
        """Abandon the call: the handler is cancelled; reads raise CANCELLED from now on."""
        if self._finished is not None:
            return False
        self._down.clear()
        self._finish(_End(rpc_error(grpc.StatusCode.CANCELLED, "cancelled by the runner")))
        self._task.cancel()
        return True

    def _check_open(self) -> None:
        end = self._finished
        if end is not None:
            if end.error is not None:
                raise end.error
            raise asyncio.InvalidStateError("the call already finished")

    # -- the handler's side -----------------------------------------------------------------
    async def _requests(self) -> AsyncIterator[Any]:
        while (message := await self._up.get()) is not None:
            yield message

    async def _serve(self, method: str, handler: Handler, metadata: Metadata) -> None:
        end = _End(None)
        try:
            bind(await self._link.identify(method, metadata))
            responses = handler(self._requests(), LocalContext(metadata))
            async with contextlib.aclosing(responses):  # type: ignore[type-var]
                async for response in responses:
                    if self._finished is not None:
                        break
                    await self._down.put(response)
        except ApiError as error:  # the identity was refused
            end = _End(rpc_error(error.code, error.message, status_trailers(error)))
        except _Aborted as abort:
            end = _End(rpc_error(abort.code, abort.details, abort.trailers))
        except asyncio.CancelledError:
            end = _End(rpc_error(grpc.StatusCode.CANCELLED, "the call was cancelled"))
            raise
        except Exception as exc:
            log.exception("in-process %s failed", method)
            end = _End(rpc_error(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"))
        finally:
            self._finish(end)
            self._link.forget(self)

    def _finish(self, end: _End) -> None:
        if self._finished is not None:
            return
        self._finished = end
        self._up.clear()  # a runner waiting to write wakes up and learns the end
        self._down.put_now(end)

    def close(self, why: str) -> None:
        """End the call from the server's side (the control plane stops)."""
        if self._finished is None:
            self._finish(_End(rpc_error(grpc.StatusCode.UNAVAILABLE, why)))
            self._task.cancel()


def _as_message(item: Any) -> Any:
    """A frame for the runner: encoded data frames as they are, messages copied.

    Encoded frames are a client's ``data`` frames, checked by the control plane
    (``raw_frames.py``); the runner reads their bytes in place
    (:mod:`sandboxd.runner.file_frames`). Messages are copied because the control plane may
    still change one it sent (an operation's open is amended and sent again when it is
    bound a second time).
    """
    if isinstance(item, bytes):
        return item
    copied = type(item)()
    copied.CopyFrom(item)
    return copied


class LocalRunnerLink:
    """A runner's "channel" to the control plane of its own process.

    It offers what the runner uses of a gRPC channel and its ``RunnerService`` stub:
    ``Connect`` and ``Operate`` calls (given their metadata) and :meth:`close`.
    """

    def __init__(self, service: Any, identify: Identify) -> None:
        self._service = service
        self.identify = identify
        self._calls: set[LocalCall] = set()
        self._closed = False

    def Connect(self, metadata: Metadata = ()) -> LocalCall:
        """Open the runner's control stream."""
        return self._open("Connect", self._service.Connect, metadata, CONNECT_FRAMES, False)

    def Operate(self, metadata: Metadata = ()) -> LocalCall:
        """Open an idle operation stream."""
        return self._open("Operate", self._service.Operate, metadata, OPERATE_FRAMES, True)

    def _open(
        self, name: str, handler: Handler, metadata: Metadata, capacity: int, copy_down: bool
    ) -> LocalCall:
        call = LocalCall(
            self,
            SERVICE + name,
            handler=handler,
            metadata=tuple(metadata),
            capacity=capacity,
            copy_down=copy_down,
        )
        if self._closed:
            call.close("the control plane is not serving")
        else:
            self._calls.add(call)
        return call

    def forget(self, call: LocalCall) -> None:
        """A call whose handler ended."""
        self._calls.discard(call)

    async def close(self, grace: float | None = None) -> None:
        """End every call of this link (a runner's session ended, or the server stops)."""
        self.shut("the connection was closed")

    def shut(self, why: str) -> None:
        """End every call at once, and refuse new ones, with UNAVAILABLE ``why``."""
        self._closed = True
        for call in list(self._calls):
            call.close(why)
        self._calls.clear()


class LocalRunners:
    """Where a control plane hands out in-process links, and ends them all when it stops."""

    def __init__(self, service: Any, identify: Identify) -> None:
        self._service = service
        self._identify = identify
        self._links: set[LocalRunnerLink] = set()
        self._stopped = False

    def channel(self) -> LocalRunnerLink:
        """A new link for one runner session (what ``open_channel`` is for a remote runner)."""
        link = LocalRunnerLink(self._service, self._identify)
        if self._stopped:
            link.shut("the control plane is not serving")
        else:
            self._links = {known for known in self._links if not known._closed}
            self._links.add(link)
        return link

    def stop(self) -> None:
        """The control plane stops: every in-process runner call ends with UNAVAILABLE."""
        self._stopped = True
        for link in self._links:
            link.shut("the control plane stopped")
        self._links.clear()
