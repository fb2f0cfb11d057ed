"""``ResourceOptions`` and how resources become ``resource_limits``/``resource_requests``.

The wire carries Kubernetes quantity strings in two messages (fields 31 and 32 of
``StartSandboxRequest``; the legacy ``resources`` field is never sent). A flat dict
(``{"cpu": "2", "memory": "4Gi", "gpu": 1}``) asks for the same amount on both sides
(Guaranteed QoS). ``ResourceOptions`` sets the sides separately; a side left out entirely is
copied from the other. Quantities are validated here, and every request must fit within its
limit, so a typo fails before any RPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandboxd_protocol.quantities import QuantityError, parse_quantity
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["ResourceOptions", "resource_messages"]

_QUANTITY_KEYS = ("cpu", "memory")
_GPU_KEYS = {
    "count": "gpu_count",
    "gpu_count": "gpu_count",
    "type": "gpu_type",
    "gpu_type": "gpu_type",
    "memory_gb": "gpu_memory_gb",
    "gpu_memory_gb": "gpu_memory_gb",
}


@dataclass(frozen=True, kw_only=True)
class ResourceOptions:
    """Separate requests and limits, plus a GPU ask applied to both.

    ``requests``/``limits`` map ``"cpu"``/``"memory"`` to quantities (``"500m"``, ``"4Gi"``);
    ``gpu`` is ``{"count": 1, "type": "h100"}`` or ``{"count": 1, "memory_gb": 80}``.
    """

    requests: dict[str, str] | None = None
    limits: dict[str, str] | None = None
    gpu: dict[str, Any] | None = None


def _quantity(key: str, side: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"resource value for {key} {side} must be a string, got {value!r}")
    text = str(value)
    try:
        parse_quantity(text)
    except QuantityError as exc:
        raise ValueError(f"invalid {key} {side} {text!r}: {exc}") from None
    return text


def _side(values: Mapping[str, Any] | None, side: str) -> dict[str, str] | None:
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise TypeError(f"resource {side} must be a dict, not {type(values).__name__}")
    unknown = set(values) - set(_QUANTITY_KEYS)
    if unknown:
        raise TypeError(f"unrecognized resource {side} keys: {sorted(unknown)} (use cpu, memory)")
    return {k: _quantity(k, side[:-1], v) for k, v in values.items() if v is not None}


def _gpu(value: object) -> gw.GpuRequest | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"gpu must be a count or a dict, got {value!r}")
    if isinstance(value, int):
        spec: dict[str, Any] = {"count": value}
    elif isinstance(value, Mapping):
        spec = dict(value)
    else:
        raise TypeError(f"gpu must be a count or a dict, not {type(value).__name__}")
    unknown = set(spec) - set(_GPU_KEYS)
    if unknown:
        raise TypeError(f"unrecognized gpu keys: {sorted(unknown)} (use count, type, memory_gb)")
    wire = {_GPU_KEYS[k]: v for k, v in spec.items() if v is not None}
    if "gpu_type" in wire and "gpu_memory_gb" in wire:
        raise ValueError("gpu takes either a type or memory_gb, not both")
    for name in ("gpu_count", "gpu_memory_gb"):
        number = wire.get(name)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int) or number < 0
        ):
            raise ValueError(f"gpu {name.removeprefix('gpu_')} must be a non-negative integer")
    if "gpu_type" in wire and (not isinstance(wire["gpu_type"], str) or not wire["gpu_type"]):
        raise ValueError("gpu type must be a non-empty string")
    return gw.GpuRequest(**wire)


def _message(values: dict[str, str], gpu: gw.GpuRequest | None) -> gw.ResourceRequest:
    msg = gw.ResourceRequest()
    for key, quantity in values.items():
        setattr(msg, key, quantity)
    if gpu is not None:
        msg.gpu.CopyFrom(gpu)
    return msg


def resource_messages(
    value: ResourceOptions | Mapping[str, Any] | None,
) -> tuple[gw.ResourceRequest | None, gw.ResourceRequest | None]:
    """Return ``(limits, requests)`` for the Start request (``None`` when not set).

    Raises ``TypeError`` for unknown keys or value types and ``ValueError`` for bad
    quantities or a request larger than its limit.
    """
    if value is None:
        return None, None
    if isinstance(value, ResourceOptions):
        requests = _side(value.requests, "requests")
        limits = _side(value.limits, "limits")
        gpu = _gpu(value.gpu)
        if requests is None:
            requests = dict(limits or {})
        if limits is None:
            limits = dict(requests)
    elif isinstance(value, Mapping):
        flat = dict(value)
        gpu = _gpu(flat.pop("gpu", None))
        unknown = set(flat) - set(_QUANTITY_KEYS)
        if unknown:
            raise TypeError(f"unrecognized resources dict keys: {sorted(unknown)}")
        limits = _side(flat, "limits") or {}
        requests = dict(limits)
    else:
        raise TypeError(f"resources must be ResourceOptions or a dict, not {type(value).__name__}")
    for key in _QUANTITY_KEYS:
        if (
            key in requests
            and key in limits
            and (parse_quantity(requests[key]) > parse_quantity(limits[key]))
        ):
            raise ValueError(
                f"resource request for {key} ({requests[key]}) exceeds limit ({limits[key]})"
            )
    if not limits and not requests and gpu is None:
        return None, None
    return _message(limits, gpu), _message(requests, gpu)
