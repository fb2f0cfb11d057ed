"""``Sandbox``: create one, run commands in it, move files, stop it.

The public methods are thin: they validate arguments in the caller's thread (so mistakes
raise where they are made), then hand a coroutine of the async core (``_lifecycle``,
``_exec``) to the background loop and return an ``OperationRef``, or block for the few
calls that are synchronous by contract (``run``, ``wait``, ``get_status``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from cwsandbox import _loop
from cwsandbox._attachments import FileSystemSnapshotOptions, Secret
from cwsandbox._catalog import SandboxCatalogMixin, endpoint_for
from cwsandbox._defaults import SandboxDefaults
from cwsandbox._lifecycle import Lifecycle
from cwsandbox._network import NetworkOptions
from cwsandbox._operation import OperationRef
from cwsandbox._polling import PollSettings
from cwsandbox._resources import ResourceOptions
from cwsandbox._sandbox_io import SandboxIOMixin
from cwsandbox._sandbox_state import SandboxInfoMixin, SandboxState
from cwsandbox._snapshots import SandboxSnapshotMixin, create_snapshot
from cwsandbox._spec import StartOptions, build_start_request
from cwsandbox._status import SandboxStatus
from cwsandbox._transport import Transport
from cwsandbox.exceptions import CWSandboxError
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

if TYPE_CHECKING:
    from cwsandbox._session import Session

__all__ = ["Sandbox"]

_log = logging.getLogger("cwsandbox")


def _seconds(value: float | None, default: float, what: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


class Sandbox(SandboxIOMixin, SandboxInfoMixin, SandboxCatalogMixin, SandboxSnapshotMixin):
    """One sandbox. ``Sandbox.run(...)`` starts it; ``with`` stops it again on exit.

    ``Sandbox(...)`` alone only describes it: the Start RPC is sent by ``start()``, by
    entering ``with``/``async with``, or by the first operation that needs it. Commands,
    terminals, files and logs are the methods of ``SandboxIOMixin``.
    """

    def __init__(
        self,
        *,
        command: str | None = None,
        args: list[str] | None = None,
        defaults: SandboxDefaults | None = None,
        container_image: str | None = None,
        tags: list[str] | None = None,
        base_url: str | None = None,
        request_timeout_seconds: float | None = None,
        poll_retry_budget_seconds: float | None = None,
        poll_rpc_timeout_seconds: float | None = None,
        max_lifetime_seconds: float | None = None,
        profile_ids: list[str] | None = None,
        profile_names: list[str] | None = None,
        runner_ids: list[str] | None = None,
        resources: ResourceOptions | dict[str, Any] | None = None,
        mounted_files: list[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: list[dict[str, Any]] | None = None,
        network: NetworkOptions | dict[str, Any] | None = None,
        file_system_snapshot: FileSystemSnapshotOptions | dict[str, Any] | None = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        secrets: Sequence[Secret | dict[str, Any]] | None = None,
        _session: Session | None = None,
    ) -> None:
        self._defaults = SandboxDefaults.coerce(defaults)
        given = locals()  # every StartOptions field is a parameter of the same name
        options = StartOptions(**{f.name: given[f.name] for f in dataclasses.fields(StartOptions)})
        request = build_start_request(options, self._defaults)
        self._setup(
            request,
            base_url=base_url,
            request_timeout=request_timeout_seconds,
            retry_budget=poll_retry_budget_seconds,
            rpc_timeout=poll_rpc_timeout_seconds,
            state=None,
        )
        self._session = _session
        if _session is not None:
            _session.adopt(self)

    def _setup(
        self,
        request: gw.StartSandboxRequest | None,
        *,
        base_url: str | None,
        request_timeout: float | None,
        retry_budget: float | None,
        rpc_timeout: float | None,
        state: SandboxState | None,
    ) -> None:
        d = self._defaults
        settings = PollSettings(
            rpc_timeout=_seconds(
                rpc_timeout, d.poll_rpc_timeout_seconds, "poll_rpc_timeout_seconds"
            ),
            retry_budget=_seconds(
                retry_budget, d.poll_retry_budget_seconds, "poll_retry_budget_seconds"
            ),
        )
        self._request_timeout = _seconds(
            request_timeout, d.request_timeout_seconds, "request_timeout_seconds"
        )
        self._life = Lifecycle(
            Transport(endpoint_for(base_url, d.base_url)),
            request=request,
            request_timeout=self._request_timeout,
            poll_settings=settings,
            state=state,
        )
        self._state = self._life.state

    @classmethod
    def _attach(
        cls,
        state: SandboxState,
        *,
        defaults: SandboxDefaults | None = None,
        base_url: str | None = None,
        request_timeout_seconds: float | None = None,
        poll_retry_budget_seconds: float | None = None,
        poll_rpc_timeout_seconds: float | None = None,
    ) -> Self:
        """A handle for an existing sandbox (from ``list``/``from_id``); it is never started."""
        self = cls.__new__(cls)
        self._defaults = SandboxDefaults.coerce(defaults)
        self._setup(
            None,
            base_url=base_url,
            request_timeout=request_timeout_seconds,
            retry_budget=poll_retry_budget_seconds,
            rpc_timeout=poll_rpc_timeout_seconds,
            state=state,
        )
        self._session = None
        return self

    def _submit(self, coro: Any) -> OperationRef[Any]:
        return OperationRef(_loop.submit(coro))

    def _snapshot_call(
        self, wait_for_ready: bool, idempotency_key: str | None
    ) -> OperationRef[str]:
        async def go() -> str:
            sid = await self._life.ensure_running()
            return await create_snapshot(self._life.transport, sid, wait_for_ready, idempotency_key)

        return self._submit(go())

    # --- creating and starting ----------------------------------------------------------

    @classmethod
    def run(
        cls,
        *args: str,
        container_image: str | None = None,
        defaults: SandboxDefaults | None = None,
        request_timeout_seconds: float | None = None,
        poll_retry_budget_seconds: float | None = None,
        poll_rpc_timeout_seconds: float | None = None,
        max_lifetime_seconds: float | None = None,
        tags: list[str] | None = None,
        profile_ids: list[str] | None = None,
        profile_names: list[str] | None = None,
        runner_ids: list[str] | None = None,
        resources: ResourceOptions | dict[str, Any] | None = None,
        mounted_files: list[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: list[dict[str, Any]] | None = None,
        network: NetworkOptions | dict[str, Any] | None = None,
        file_system_snapshot: FileSystemSnapshotOptions | dict[str, Any] | None = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        secrets: Sequence[Secret | dict[str, Any]] | None = None,
    ) -> Sandbox:
        """Start a sandbox running ``args`` (default: stay alive until stopped) and return it.

        Returns as soon as the server accepted the Start; it does not wait for RUNNING (the
        first exec or file operation does, or call ``wait()``).
        """
        options = dict(locals())  # forward every keyword parameter unchanged
        del options["cls"], options["args"]
        sandbox = cls(
            command=args[0] if args else None, args=list(args[1:]) if args else None, **options
        )
        sandbox.start().result()
        return sandbox

    def start(self) -> OperationRef[None]:
        """Send Start unless already sent; idempotent."""

        async def go() -> None:
            await self._life.ensure_started()

        return self._submit(go())

    @classmethod
    def session(cls, defaults: SandboxDefaults | Mapping[str, Any] | None = None) -> Session:
        """A ``Session`` with these defaults (same as ``Session(defaults)``)."""
        from cwsandbox._session import Session

        return Session(defaults)

    # --- status ----------------------------------------------------------------------------

    async def _wait_ready(self, timeout: float | None = None) -> Sandbox:
        await self._life.wait_ready(timeout)
        return self

    def wait(self, timeout: float | None = None) -> Sandbox:
        """Block until the sandbox is running (starting it if needed) and return it.

        Raises ``SandboxFailedError``/``SandboxTerminatedError`` if it ended that way, and
        ``SandboxTimeoutError`` after ``timeout`` (default ``request_timeout_seconds``).
        """
        result: Sandbox = self._submit(self._wait_ready(timeout)).result()
        return result

    def get_status(self) -> SandboxStatus:
        """Ask the server for the current status (one Get) and return it."""
        status: SandboxStatus = self._submit(self._life.get_status()).result()
        return status

    def wait_until_complete(
        self, timeout: float | None = None, *, raise_on_termination: bool = True
    ) -> OperationRef[Sandbox]:
        """Wait until the sandbox's main process has ended; ``returncode`` then holds its code.

        ``SandboxFailedError`` if it failed; ``SandboxTerminatedError`` if it was terminated
        (including by this handle's ``stop()``) unless ``raise_on_termination=False``.
        """

        async def go() -> Sandbox:
            await self._life.wait_complete(timeout, raise_on_termination)
            return self

        return self._submit(go())

    # --- stopping ----------------------------------------------------------------------------

    def stop(
        self,
        *,
        snapshot_on_stop: bool = False,
        graceful_shutdown_seconds: float = 10.0,
        missing_ok: bool = False,
        wait_for_ready: bool = True,
        idempotency_key: str | None = None,
    ) -> OperationRef[None]:
        """Stop the sandbox and wait until the server reports its final status.

        A sandbox that was never started, or is known to have ended, is left alone. With
        ``missing_ok=True`` a sandbox the server no longer knows counts as stopped.
        """
        if graceful_shutdown_seconds < 0:
            raise ValueError("graceful_shutdown_seconds must not be negative")
        return self._submit(
            self._stop_and_close(
                graceful_shutdown_seconds=graceful_shutdown_seconds,
                missing_ok=missing_ok,
                snapshot_on_stop=snapshot_on_stop,
                wait_for_ready=wait_for_ready,
                idempotency_key=idempotency_key,
            )
        )

    async def _stop_and_close(
        self,
        *,
        graceful_shutdown_seconds: float = 10.0,
        missing_ok: bool = False,
        snapshot_on_stop: bool = False,
        wait_for_ready: bool = True,
        idempotency_key: str | None = None,
    ) -> None:
        """Stop, then release the channels (a later call on the handle reopens them)."""
        try:
            await self._life.stop(
                graceful_shutdown_seconds=graceful_shutdown_seconds,
                missing_ok=missing_ok,
                snapshot_on_stop=snapshot_on_stop,
                wait_for_ready=wait_for_ready,
                idempotency_key=idempotency_key,
            )
        finally:
            await self._life.transport.close()

    # --- context managers and awaiting ---------------------------------------------------

    def __enter__(self) -> Sandbox:
        self.start().result()
        return self

    async def _exit(self, failing: bool) -> None:
        try:
            await self._stop_and_close(missing_ok=True)
        except CWSandboxError:
            if not failing:
                raise
            _log.warning("could not stop sandbox %s", self.sandbox_id, exc_info=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._submit(self._exit(exc_type is not None)).result()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._submit(self._exit(exc_type is not None))

    def __await__(self) -> Generator[Any, None, Sandbox]:
        return asyncio.wrap_future(_loop.submit(self._wait_ready())).__await__()

    def __repr__(self) -> str:
        status = self.status.value if self.status is not None else "not started"
        return f"<Sandbox id={self.sandbox_id} status={status}>"
