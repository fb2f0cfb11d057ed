"""Every method of every served service reaches its handler through the control plane's table.

The control plane registers its services into one method table (``method_table.py``)
instead of letting the generated code register each method with grpc.aio twice. A method
the table dropped would answer grpc's own UNIMPLEMENTED ("Method not found!") instead of
its handler's answer. A call without a key is answered by the authentication step that
runs only once a handler was found (UNAUTHENTICATED), so calling every method of every
service without a key proves each one is routed, whatever its request shape. Services the
control plane does not serve (v1 templates and the direct data plane) and unknown methods
still get grpc's UNIMPLEMENTED.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import sandboxd_protocol
from tests.support.processes import ControlPlaneProcess, keyed_channel

NOT_SERVED = {
    "coreweave.sandbox.v1.SandboxTemplateService",
    "coreweave.sandbox.v1.SandboxDataPlaneService",
}


def all_services() -> list[ServiceDescriptor]:
    """Every service the protocol package declares, in each protocol version."""
    services: list[ServiceDescriptor] = []
    for version in ("v1beta2", "v1", "sandboxd_v1"):
        package = importlib.import_module(f"{sandboxd_protocol.__name__}.{version}")
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith("_pb2"):
                pb2 = importlib.import_module(f"{package.__name__}.{module.name}")
                services.extend(pb2.DESCRIPTOR.services_by_name.values())
    return services


def call(channel: grpc.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    """Call ``method`` without a key, with an empty request of its shape; the status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw = {"request_serializer": None, "response_deserializer": None}
    try:
        result: Any
        if method.client_streaming and method.server_streaming:
            result = channel.stream_stream(path, **raw)(iter([b""]), timeout=10)
            list(result)
        elif method.client_streaming:
            channel.stream_unary(path, **raw)(iter([b""]), timeout=10)
        elif method.server_streaming:
            list(channel.unary_stream(path, **raw)(b"", timeout=10))
        else:
            channel.unary_unary(path, **raw)(b"", timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    data_dir: Path = tmp_path_factory.mktemp("routing")
    control_plane = ControlPlaneProcess(data_dir=data_dir).start()
    try:
        with keyed_channel(control_plane.target, None) as keyless:
            yield keyless
    finally:
        control_plane.stop()


def test_every_method_of_every_served_service_reaches_its_handler(
    channel: grpc.Channel,
) -> None:
    served = [s for s in all_services() if s.full_name not in NOT_SERVED]
    methods = [m for service in served for m in service.methods]
    assert len(methods) > 90  # the table holds them all, not a handful
    answers = {f"{m.containing_service.name}/{m.name}": call(channel, m) for m in methods}
    unrouted = sorted(
        name for name, code in answers.items() if code is not grpc.StatusCode.UNAUTHENTICATED
    )
    assert unrouted == [], {name: answers[name] for name in unrouted}


def test_unserved_services_and_unknown_methods_are_unimplemented(channel: grpc.Channel) -> None:
    unserved = [s for s in all_services() if s.full_name in NOT_SERVED]
    assert len(unserved) == len(NOT_SERVED)
    for service in unserved:
        for method in service.methods:
            assert call(channel, method) is grpc.StatusCode.UNIMPLEMENTED, method.full_name
    unknown = channel.unary_unary("/coreweave.sandbox.v1beta2.GatewayService/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as raised:
        unknown(b"", timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
