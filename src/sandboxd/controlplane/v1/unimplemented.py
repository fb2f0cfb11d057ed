"""Handlers for v1 RPCs whose feature this server does not offer (yet).

Why explicit handlers rather than gRPC's default: the default UNIMPLEMENTED carries no
reason, while ours says which feature with ``CWSANDBOX_NOT_IMPLEMENTED``, as the v1beta2
services do, so a client (and its user) can tell "not offered here" from a typo in a URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sandboxd.controlplane.start_request import not_implemented
from sandboxd.errors import abort_with

Context = grpc.aio.ServicerContext[Any, Any]


def unimplemented(feature: str, what: str) -> Callable[..., Awaitable[Any]]:
    """A unary handler answering UNIMPLEMENTED for ``feature``."""

    async def handler(self: object, request: object, context: Context) -> Any:
        await abort_with(context, not_implemented(feature, what))

    handler.__doc__ = f"Not offered: answers UNIMPLEMENTED ({what})."
    return handler
