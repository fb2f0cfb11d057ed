"""The control plane's method table: one lookup per call, nothing registered twice.

The server side is a recording stand-in (only ``add_generic_rpc_handlers`` is called on a
server by the table); the integration test ``test_method_routing.py`` drives a real one.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from sandboxd.controlplane.method_table import MethodTable


class Details(grpc.HandlerCallDetails):
    """What grpc hands a generic handler: the method's full name (and metadata)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class CountingHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler without a service name, answering one method, counting questions."""

    def __init__(self, method: str, handler: Any) -> None:
        self.method, self.handler, self.asked = method, handler, 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        self.asked += 1
        return self.handler if handler_call_details.method == self.method else None


class RecordingServer:
    """Stands in for ``grpc.aio.Server``: records the generic handlers it is given."""

    def __init__(self) -> None:
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


async def behaviour(request: Any, context: Any) -> Any:
    return request


def unary() -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(behaviour)


def register_like_generated_code(
    table: MethodTable, service: str, handlers: dict[str, Any]
) -> None:
    """What a generated ``add_*Servicer_to_server`` does: a generic copy, then by name."""
    table.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    table.add_registered_method_handlers(service, handlers)


def test_the_server_gets_one_generic_handler_that_answers_every_method() -> None:
    table, server = MethodTable(), RecordingServer()
    start, stop = unary(), unary()
    register_like_generated_code(table, "pkg.Gateway", {"Start": start, "Stop": stop})
    table.install(server)  # type: ignore[arg-type]
    assert server.generic == [table]
    assert table.methods() == {"/pkg.Gateway/Start", "/pkg.Gateway/Stop"}
    assert table.service(Details("/pkg.Gateway/Start")) is start
    assert table.service(Details("/pkg.Gateway/Stop")) is stop
    assert table.service(Details("/pkg.Gateway/Nope")) is None
    assert table.service(Details("/other.Service/Start")) is None


def test_a_generic_only_service_is_kept_and_asked_only_for_methods_not_in_the_table() -> None:
    table = MethodTable()
    start, raw = unary(), unary()
    register_like_generated_code(table, "pkg.Gateway", {"Start": start})
    extra = CountingHandler("/pkg.Raw/Get", raw)
    table.add_generic_rpc_handlers((extra,))
    table.install(RecordingServer())  # type: ignore[arg-type]
    assert table.service(Details("/pkg.Gateway/Start")) is start
    assert extra.asked == 0  # a method in the table is one dict lookup
    assert table.service(Details("/pkg.Raw/Get")) is raw
    assert table.service(Details("/pkg.Raw/Other")) is None
    assert extra.asked == 2


def test_the_generated_generic_copy_of_a_registered_service_is_dropped() -> None:
    table = MethodTable()
    register_like_generated_code(table, "pkg.Gateway", {"Start": unary()})
    table.install(RecordingServer())  # type: ignore[arg-type]
    assert table._fallback == ()


def test_a_method_registered_twice_is_refused_by_name() -> None:
    table = MethodTable()
    table.add_registered_method_handlers("pkg.Gateway", {"Start": unary()})
    with pytest.raises(ValueError, match=r"/pkg\.Gateway/Start"):
        table.add_registered_method_handlers("pkg.Gateway", {"Start": unary()})
