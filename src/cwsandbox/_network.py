"""``NetworkOptions``: how a sandbox is reachable and what it may reach."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["NetworkOptions"]


@dataclass(frozen=True, kw_only=True)
class NetworkOptions:
    """Networking for one sandbox; every field is optional and sent only when set.

    ``ingress_mode`` and ``egress_mode`` name modes a profile offers (see
    ``Profile.ingress_modes`` / ``egress_modes``, e.g. ``egress_mode="internet"``);
    ``exposed_ports`` lists container ports to expose through the ingress.
    """

    ingress_mode: str | None = None
    exposed_ports: tuple[int, ...] | None = None
    egress_mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("ingress_mode", "egress_mode"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"NetworkOptions.{name} must be a non-empty string, got {value!r}")
        if self.exposed_ports is not None:
            if isinstance(self.exposed_ports, str | bytes):
                raise TypeError("NetworkOptions.exposed_ports must be a sequence of port numbers")
            ports = tuple(self.exposed_ports)
            for port in ports:
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    raise ValueError(f"exposed port must be an integer in 1-65535, got {port!r}")
            object.__setattr__(self, "exposed_ports", ports)

    @classmethod
    def coerce(cls, value: NetworkOptions | Mapping[str, Any] | None) -> NetworkOptions | None:
        """Accept ``NetworkOptions``, a dict with the same keys, or ``None``."""
        if value is None or isinstance(value, NetworkOptions):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"network must be NetworkOptions or a dict, not {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise TypeError(f"unrecognized network keys: {sorted(unknown)} (use {sorted(known)})")
        return cls(**dict(value))

    def to_proto(self) -> gw.NetworkOptions:
        """The wire message, with only the fields that are set."""
        msg = gw.NetworkOptions()
        if self.ingress_mode is not None:
            msg.ingress_mode = self.ingress_mode
        if self.exposed_ports:
            msg.exposed_ports.extend(self.exposed_ports)
        if self.egress_mode is not None:
            msg.egress_mode = self.egress_mode
        return msg
