"""Every served method in one table, answered by one generic handler.

Why: the generated ``add_*Servicer_to_server`` functions register each method twice, as a
generic handler and as a "registered method". For every registered method grpc.aio's
server keeps a pending request task, and for every incoming call it waits on all of them
(``asyncio.wait`` over ~90 tasks on this control plane): callbacks added to and removed
from each task, per call. On the 2-core development VM that cost 0.1 ms of the server's CPU
and 0.15 ms of latency per call, on every exec and every Start. Here the generated
functions register into a :class:`MethodTable` instead of the server; the table keeps each
method's handler once, by its full name, and the server gets one generic handler that
looks a call's method up in a dict. The server then waits on a single request per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Collects services' method handlers; installed on a server as its one generic handler.

    Duck-types the two registration calls generated code makes on a server. A generic
    handler whose service also registered its methods (as generated code always does) is
    the same handlers a second time and is dropped; any other generic handler is kept and
    asked, in order, for methods the table does not have.
    """

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._services: set[str] = set()
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._fallback: tuple[grpc.GenericRpcHandler[Any, Any], ...] = ()

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Add ``service``'s methods (``{"Method": handler}``) under ``/service/Method``."""
        for name, handler in handlers.items():
            full = f"/{service}/{name}"
            if full in self._methods:
                raise ValueError(f"method {full} is registered twice")
            self._methods[full] = handler
        self._services.add(service)

    def add_generic_rpc_handlers(
        self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        """Keep generic handlers; those of a service registered by name are dropped later."""
        self._generic.extend(handlers)

    def install(self, server: grpc.aio.Server) -> None:
        """Serve every collected method on ``server`` through this table."""
        self._fallback = tuple(
            handler
            for handler in self._generic
            if not (
                isinstance(handler, grpc.ServiceRpcHandler)
                and handler.service_name() in self._services
            )
        )
        server.add_generic_rpc_handlers((self,))

    def methods(self) -> frozenset[str]:
        """The full names (``/package.Service/Method``) the table answers by name."""
        return frozenset(self._methods)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The call's method handler; None (UNIMPLEMENTED) for a method nobody serves."""
        handler = self._methods.get(handler_call_details.method)
        if handler is not None:
            return handler
        for generic in self._fallback:
            handler = generic.service(handler_call_details)
            if handler is not None:
                return handler
        return None
