"""``Session``: shared defaults for many sandboxes, and cleanup of all of them.

A session owns the sandboxes it creates (and any it adopts). ``session.sandbox()`` returns
a handle whose Start is sent lazily by its first operation, so unused handles cost nothing.
``close()``, leaving a ``with`` block, or interpreter exit (atexit) stops every owned
sandbox, concurrently, so a crashed script does not leave sandboxes running.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from cwsandbox import _loop
from cwsandbox._attachments import FileSystemSnapshotOptions, Secret
from cwsandbox._catalog import (
    endpoint_for,
    get_sandbox,
    list_request,
    list_sandboxes,
    require_id,
)
from cwsandbox._defaults import SandboxDefaults
from cwsandbox._functions import RemoteFunction
from cwsandbox._network import NetworkOptions
from cwsandbox._operation import OperationRef
from cwsandbox._resources import ResourceOptions
from cwsandbox._sandbox import Sandbox
from cwsandbox._sandbox_state import SandboxState
from cwsandbox.exceptions import SandboxError

__all__ = ["Session"]

_log = logging.getLogger("cwsandbox")
P = ParamSpec("P")
R = TypeVar("R")
#: Sessions not yet closed. Strong references on purpose: a session dropped without
#: ``close()`` must still have its sandboxes stopped at interpreter exit.
_OPEN: set[Session] = set()
#: How long interpreter exit may spend stopping one session's sandboxes.
ATEXIT_TIMEOUT_SECONDS = 60.0


class Session:
    """A group of sandboxes sharing ``SandboxDefaults``, stopped together on close."""

    def __init__(
        self,
        defaults: SandboxDefaults | Mapping[str, Any] | None = None,
        report_to: builtins.list[str] | None = None,
    ) -> None:
        self._defaults = SandboxDefaults.coerce(defaults)
        if report_to:
            _log.warning("metrics reporting (report_to=%r) is not supported; ignored", report_to)
        self._sandboxes: builtins.list[Sandbox] = []
        self._closed = False
        _OPEN.add(self)  # discarded again by close()

    @property
    def defaults(self) -> SandboxDefaults:
        """The defaults every sandbox of this session starts from."""
        return self._defaults

    @property
    def sandbox_count(self) -> int:
        """How many sandboxes the session currently owns."""
        return len(self._sandboxes)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("this session is closed")

    def sandbox(
        self,
        *,
        command: str | None = None,
        args: builtins.list[str] | None = None,
        container_image: str | None = None,
        tags: builtins.list[str] | None = None,
        profile_ids: builtins.list[str] | None = None,
        profile_names: builtins.list[str] | None = None,
        runner_ids: builtins.list[str] | None = None,
        resources: ResourceOptions | dict[str, Any] | None = None,
        mounted_files: builtins.list[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: builtins.list[dict[str, Any]] | None = None,
        network: NetworkOptions | dict[str, Any] | None = None,
        file_system_snapshot: FileSystemSnapshotOptions | dict[str, Any] | None = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        secrets: Sequence[Secret | dict[str, Any]] | None = None,
    ) -> Sandbox:
        """A sandbox owned by this session; it starts on its first operation (or ``start()``)."""
        self._check_open()
        return Sandbox(
            command=command,
            args=args,
            defaults=self._defaults,
            container_image=container_image,
            tags=tags,
            profile_ids=profile_ids,
            profile_names=profile_names,
            runner_ids=runner_ids,
            resources=resources,
            mounted_files=mounted_files,
            s3_mount=s3_mount,
            ports=ports,
            network=network,
            file_system_snapshot=file_system_snapshot,
            max_timeout_seconds=max_timeout_seconds,
            environment_variables=environment_variables,
            annotations=annotations,
            secrets=secrets,
            _session=self,
        )

    def adopt(self, sandbox: Sandbox) -> None:
        """Make the session own ``sandbox``: it will be stopped when the session closes."""
        self._check_open()
        if not any(s is sandbox for s in self._sandboxes):
            self._sandboxes.append(sandbox)

    def _forget(self, sandbox: Sandbox) -> None:
        """Stop owning ``sandbox`` (it was stopped already, e.g. by a remote function)."""
        self._sandboxes = [s for s in self._sandboxes if s is not sandbox]

    def function(
        self,
        *,
        container_image: str | None = None,
        temp_dir: str | None = None,
        profile_ids: builtins.list[str] | None = None,
        profile_names: builtins.list[str] | None = None,
        runner_ids: builtins.list[str] | None = None,
        resources: ResourceOptions | dict[str, Any] | None = None,
        mounted_files: Sequence[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: Sequence[dict[str, Any]] | None = None,
        network: NetworkOptions | dict[str, Any] | None = None,
        file_system_snapshot: FileSystemSnapshotOptions | dict[str, Any] | None = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]:
        """Decorator: the function runs in its own sandbox of this session per call.

        ``fn.remote(*args, **kwargs)`` returns an ``OperationRef`` of the result,
        ``fn.map([(a, b), ...])`` one per argument tuple, ``fn.local(...)`` runs it here.
        Arguments and results must be JSON values; a function that raises gives
        ``FunctionError`` with the remote traceback. Async functions are refused
        (``AsyncFunctionError``). ``temp_dir`` (default ``SandboxDefaults.temp_dir``) holds
        the payload and result files in the sandbox.
        """
        self._check_open()
        directory = temp_dir if temp_dir is not None else self._defaults.temp_dir

        def decorate(fn: Callable[P, R]) -> RemoteFunction[P, R]:
            return RemoteFunction(
                fn,
                session=self,
                container_image=container_image,
                temp_dir=directory,
                profile_ids=profile_ids,
                profile_names=profile_names,
                runner_ids=runner_ids,
                resources=resources,
                mounted_files=None if mounted_files is None else builtins.list(mounted_files),
                s3_mount=s3_mount,
                ports=None if ports is None else builtins.list(ports),
                network=network,
                file_system_snapshot=file_system_snapshot,
                max_timeout_seconds=max_timeout_seconds,
                environment_variables=environment_variables,
                annotations=annotations,
            )

        return decorate

    def _attach(self, state: SandboxState) -> Sandbox:
        return Sandbox._attach(state, defaults=self._defaults)

    def list(
        self,
        *,
        tags: builtins.list[str] | None = None,
        status: str | None = None,
        profile_ids: builtins.list[str] | None = None,
        profile_names: builtins.list[str] | None = None,
        runner_ids: builtins.list[str] | None = None,
        include_stopped: bool = False,
        adopt: bool = False,
    ) -> OperationRef[builtins.list[Sandbox]]:
        """Like ``Sandbox.list``, restricted to sandboxes carrying the session's default tags."""
        endpoint = endpoint_for(None, self._defaults.base_url)
        request = list_request(
            tags=self._defaults.merge_tags(tags),
            status=status,
            profile_ids=profile_ids,
            profile_names=profile_names,
            runner_ids=runner_ids,
            include_stopped=include_stopped,
        )
        timeout = self._defaults.request_timeout_seconds

        async def go() -> builtins.list[Sandbox]:
            infos = await list_sandboxes(endpoint, request, timeout)
            handles = []
            for info in infos:
                state = SandboxState()
                state.apply_info(info)
                handles.append(self._attach(state))
            if adopt:
                for handle in handles:
                    self.adopt(handle)
            return handles

        return OperationRef(_loop.submit(go()))

    def from_id(self, sandbox_id: str, *, adopt: bool = True) -> OperationRef[Sandbox]:
        """A handle for an existing sandbox, owned by the session unless ``adopt=False``."""
        sid = require_id(sandbox_id)
        endpoint = endpoint_for(None, self._defaults.base_url)
        timeout = self._defaults.request_timeout_seconds

        async def go() -> Sandbox:
            resp = await get_sandbox(endpoint, sid, timeout)
            state = SandboxState(sandbox_id=sid)
            state.apply_get(resp, polling=False)
            handle = self._attach(state)
            if adopt:
                self.adopt(handle)
            return handle

        return OperationRef(_loop.submit(go()))

    async def _close(self) -> None:
        self._closed = True
        owned, self._sandboxes = self._sandboxes, []
        outcomes = await asyncio.gather(
            *(sb._stop_and_close(missing_ok=True) for sb in owned), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise SandboxError(
                f"{len(errors)} of {len(owned)} sandboxes could not be stopped; first: {errors[0]}"
            ) from errors[0]

    def close(self) -> OperationRef[None]:
        """Stop every sandbox the session owns (never-started ones need no RPC)."""
        _OPEN.discard(self)
        return OperationRef(_loop.submit(self._close()))

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            self.close().result()
        except SandboxError:
            if exc_type is None:
                raise
            _log.warning("could not stop all sandboxes of the session", exc_info=True)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        except SandboxError:
            if exc_type is None:
                raise
            _log.warning("could not stop all sandboxes of the session", exc_info=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.sandbox_count} sandboxes"
        return f"<Session {state}>"


@atexit.register
def _close_open_sessions() -> None:
    """At interpreter exit, stop what open sessions still own (best effort, bounded)."""
    for session in builtins.list(_OPEN):
        if session._closed:
            continue
        try:
            session.close().result(timeout=ATEXIT_TIMEOUT_SECONDS)
        except Exception as exc:  # never let cleanup turn a clean exit into a traceback
            _log.warning("could not stop the sandboxes of %r at exit: %s", session, exc)
