"""Calls about sandboxes by id rather than through a handle: List, Get (from_id), Delete.

Each call opens its own short-lived transport, so it reads ``$CWSANDBOX_API_KEY`` afresh and
leaves nothing open. A listing is one operation with one deadline across all its pages, and
it re-sends every filter on each page (protocol §4.6, §8).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import Self

from cwsandbox import _loop
from cwsandbox._config import BASE_URL_ENV, Endpoint, resolve_endpoint
from cwsandbox._defaults import SandboxDefaults, string_tuple
from cwsandbox._operation import OperationRef
from cwsandbox._pagination import Deadline, collect_pages_async
from cwsandbox._sandbox_state import SandboxState
from cwsandbox._status import SandboxStatus
from cwsandbox._transport import Transport
from cwsandbox.exceptions import SandboxError, SandboxNotFoundError, SandboxTimeoutError
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = [
    "SandboxCatalogMixin",
    "delete_sandbox",
    "endpoint_for",
    "get_sandbox",
    "list_request",
    "list_sandboxes",
    "require_id",
]


def endpoint_for(base_url: str | None, fallback: str | None = None) -> Endpoint:
    """Where to connect: ``base_url`` if given, else ``$CWSANDBOX_BASE_URL``, else ``fallback``.

    ``fallback`` is ``SandboxDefaults.base_url`` for handles; without it the local default.
    """
    if base_url is not None or fallback is None or os.environ.get(BASE_URL_ENV, "").strip():
        return resolve_endpoint(base_url)
    return Endpoint.parse(fallback)


def require_id(sandbox_id: object) -> str:
    """A sandbox id must be a non-blank string."""
    if not isinstance(sandbox_id, str):
        raise TypeError(f"sandbox_id must be a string, not {type(sandbox_id).__name__}")
    if not sandbox_id.strip():
        raise ValueError("sandbox_id must not be blank")
    return sandbox_id


def list_request(
    *,
    tags: Sequence[str] | None,
    status: SandboxStatus | str | None,
    profile_ids: Sequence[str] | None,
    profile_names: Sequence[str] | None,
    runner_ids: Sequence[str] | None,
    include_stopped: bool,
) -> gw.ListSandboxesRequest:
    """Validate the filters (``TypeError``/``ValueError``) and build the List request."""
    request = gw.ListSandboxesRequest(
        tags=string_tuple(tags, "tags") or (),
        profile_ids=string_tuple(profile_ids, "profile_ids") or (),
        profile_names=string_tuple(profile_names, "profile_names") or (),
        runner_ids=string_tuple(runner_ids, "runner_ids") or (),
    )
    if status is not None:
        request.status = SandboxStatus.parse(status).to_proto()  # type: ignore[assignment]
    if include_stopped:
        request.include_stopped = True
    return request


async def list_sandboxes(
    endpoint: Endpoint, request: gw.ListSandboxesRequest, timeout: float
) -> list[gw.SandboxInfo]:
    """Page through List; the server applies every filter (a sandbox must carry all tags)."""
    deadline = Deadline(timeout)
    transport = Transport(endpoint)

    async def fetch(token: str) -> tuple[list[gw.SandboxInfo], str]:
        request.page_token = token
        left = deadline.remaining()
        if left <= 0:
            raise SandboxTimeoutError(f"listing sandboxes timed out after {timeout:g}s")
        resp = await transport.unary(
            "List", request, gw.ListSandboxesResponse, timeout=left, operation="list"
        )
        return list(resp.sandboxes), resp.next_page_token

    try:
        return await collect_pages_async(fetch, operation="list sandboxes")
    finally:
        await transport.close()


async def get_sandbox(endpoint: Endpoint, sandbox_id: str, timeout: float) -> gw.GetSandboxResponse:
    """One Get; NOT_FOUND (with any details) is ``SandboxNotFoundError``."""
    transport = Transport(endpoint)
    try:
        return await transport.unary(
            "Get",
            gw.GetSandboxRequest(sandbox_id=sandbox_id),
            gw.GetSandboxResponse,
            timeout=timeout,
            operation="get",
            sandbox_id=sandbox_id,
        )
    finally:
        await transport.close()


async def delete_sandbox(
    endpoint: Endpoint, sandbox_id: str, timeout: float, missing_ok: bool
) -> None:
    """Delete; ``success`` must be true, and a missing sandbox is fine with ``missing_ok``."""
    transport = Transport(endpoint)
    try:
        resp = await transport.unary(
            "Delete",
            gw.DeleteSandboxRequest(sandbox_id=sandbox_id),
            gw.DeleteSandboxResponse,
            timeout=timeout,
            operation="delete",
            sandbox_id=sandbox_id,
        )
    except SandboxNotFoundError:
        if missing_ok:
            return
        raise
    finally:
        await transport.close()
    if not resp.success:
        raise SandboxError(f"Failed to delete sandbox {sandbox_id}: {resp.error_message}")


_DEFAULT_TIMEOUT = 300.0


def _timeout(value: float | None) -> float:
    if value is None:
        return _DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"timeout_seconds must be a positive number, got {value!r}")
    return float(value)


class SandboxCatalogMixin:
    """The class-level calls of ``Sandbox``: ``list``, ``from_id`` and ``delete``."""

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
        raise NotImplementedError  # pragma: no cover - provided by Sandbox

    @classmethod
    def list(
        cls,
        *,
        tags: builtins.list[str] | None = None,
        status: str | None = None,
        profile_ids: builtins.list[str] | None = None,
        profile_names: builtins.list[str] | None = None,
        runner_ids: builtins.list[str] | None = None,
        include_stopped: bool = False,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
        poll_retry_budget_seconds: float | None = None,
        poll_rpc_timeout_seconds: float | None = None,
    ) -> OperationRef[builtins.list[Self]]:
        """Sandboxes matching every filter (all ``tags``; ``status`` by name, e.g. "running").

        Only sandboxes that have not ended are listed unless ``include_stopped=True`` or
        ``status`` names an end state. Each returned handle can be used directly.
        """
        endpoint = endpoint_for(base_url)
        timeout = _timeout(timeout_seconds)
        request = list_request(
            tags=tags,
            status=status,
            profile_ids=profile_ids,
            profile_names=profile_names,
            runner_ids=runner_ids,
            include_stopped=include_stopped,
        )

        async def go() -> builtins.list[Self]:
            infos = await list_sandboxes(endpoint, request, timeout)
            handles = []
            for info in infos:
                state = SandboxState()
                state.apply_info(info)
                handles.append(
                    cls._attach(
                        state,
                        base_url=base_url,
                        poll_retry_budget_seconds=poll_retry_budget_seconds,
                        poll_rpc_timeout_seconds=poll_rpc_timeout_seconds,
                    )
                )
            return handles

        return OperationRef(_loop.submit(go()))

    @classmethod
    def from_id(
        cls,
        sandbox_id: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
        poll_retry_budget_seconds: float | None = None,
        poll_rpc_timeout_seconds: float | None = None,
    ) -> OperationRef[Self]:
        """A handle for an existing sandbox (one Get; ``SandboxNotFoundError`` if unknown)."""
        sid = require_id(sandbox_id)
        endpoint = endpoint_for(base_url)
        timeout = _timeout(timeout_seconds)

        async def go() -> Self:
            resp = await get_sandbox(endpoint, sid, timeout)
            state = SandboxState(sandbox_id=sid)
            state.apply_get(resp, polling=False)
            return cls._attach(
                state,
                base_url=base_url,
                poll_retry_budget_seconds=poll_retry_budget_seconds,
                poll_rpc_timeout_seconds=poll_rpc_timeout_seconds,
            )

        return OperationRef(_loop.submit(go()))

    @classmethod
    def delete(
        cls,
        sandbox_id: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float | None = None,
        missing_ok: bool = False,
    ) -> OperationRef[None]:
        """Delete a sandbox by id (no waiting); ``missing_ok`` ignores an unknown id."""
        sid = require_id(sandbox_id)
        endpoint = endpoint_for(base_url)
        timeout = _timeout(timeout_seconds)
        return OperationRef(_loop.submit(delete_sandbox(endpoint, sid, timeout, missing_ok)))
