"""The runner's configuration as one immutable value, validated where it is built.

Why frozen and validated up front: the agent redials forever, so a malformed URL or a negative
interval must fail at start-up with a clear message, not surface as an odd retry loop later.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from sandboxd.runner.capacity import HostReserve
from sandboxd.runner.create_slots import default_concurrent_creates
from sandboxd.runner.exec_limits import DEFAULT_MAX_EXECS_PER_SANDBOX

_DEFAULT_PORTS = {"http": 80, "https": 443}


def default_state_dir() -> Path:
    """Where the runner keeps its id (and later its sandbox state) when not told otherwise."""
    return platformdirs.user_data_path("sandboxd") / "runner"


@dataclass(frozen=True)
class ControlPlaneAddress:
    """A gRPC dial target (``host:port``) and whether to use TLS."""

    target: str
    secure: bool


def parse_control_plane_url(url: str) -> ControlPlaneAddress:
    """Parse ``http://host:port`` (plaintext) or ``https://host[:port]`` (TLS).

    Raises ``ValueError`` naming what is wrong. Paths, queries and credentials are refused
    because gRPC has nowhere to put them and silently dropping them would surprise.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"control plane URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"control plane URL {url!r} has no host")
    if parts.username or parts.password:
        raise ValueError(f"control plane URL {url!r} must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"control plane URL {url!r} must not have a path or query")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"control plane URL {url!r} has an invalid port") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return ControlPlaneAddress(target=f"{host}:{port}", secure=parts.scheme == "https")


DEFAULT_KEEPALIVE_SECONDS = 10.0


@dataclass(frozen=True)
class RunnerSettings:
    """Everything the agent needs to join a control plane.

    ``join_token`` is used only while ``state_dir`` holds no credential for the runner's id;
    ``ca_file`` (PEM) replaces the system's root certificates for an ``https://`` control
    plane. ``heartbeat_interval`` is only a fallback: the control plane's ``Registered`` reply wins
    when it names an interval. Reconnects back off exponentially from
    ``reconnect_backoff_min`` to ``reconnect_backoff_max`` seconds, with jitter so that many
    runners do not stampede a restarted control plane. ``keepalive_interval`` is the HTTP/2
    keepalive ping interval (None: no pings). Why on by default: a connection cut without a
    FIN or RST (a partition, a dead NAT entry) looks alive to TCP for many minutes; pings make
    the runner notice within about interval + 10 s and redial. The control plane permits
    pings down to one per second.

    ``reserve`` is the CPU and memory kept for the host (see ``capacity.py``): the runner
    reports, and its sandboxes together may use, the rest. ``max_execs_per_sandbox`` caps
    concurrent execs in one sandbox (see ``exec_limits.py``), ``max_concurrent_creates`` the
    cold creates the backend builds at once (``create_slots.py``). ``egress_blocked`` are CIDRs no
    sandbox may reach on top of the built-in list and the control plane (``egress.py``), e.g.
    a public address the provider maps to this host without any interface carrying it.
    """

    control_plane: str
    join_token: str = ""
    runner_id: str | None = None
    ca_file: Path | None = None
    runner_group_id: str = "default"
    tags: tuple[str, ...] = ()
    state_dir: Path = field(default_factory=default_state_dir)
    heartbeat_interval: float = 2.0
    reconnect_backoff_min: float = 0.2
    reconnect_backoff_max: float = 5.0
    register_timeout: float = 30.0
    keepalive_interval: float | None = DEFAULT_KEEPALIVE_SECONDS
    reserve: HostReserve = field(default_factory=HostReserve)
    max_execs_per_sandbox: int = DEFAULT_MAX_EXECS_PER_SANDBOX
    max_concurrent_creates: int = field(default_factory=default_concurrent_creates)
    egress_blocked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        parse_control_plane_url(self.control_plane)
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if not 0 < self.reconnect_backoff_min <= self.reconnect_backoff_max:
            raise ValueError("need 0 < reconnect_backoff_min <= reconnect_backoff_max")
        if self.register_timeout <= 0:
            raise ValueError("register_timeout must be positive")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        if not self.runner_group_id:
            raise ValueError("runner_group_id must not be empty")
        if self.max_execs_per_sandbox < 1:
            raise ValueError("max_execs_per_sandbox must be at least 1")
        if self.max_concurrent_creates < 1:
            raise ValueError("max_concurrent_creates must be at least 1")
        for cidr in self.egress_blocked:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"--block-egress {cidr!r} is not a CIDR") from None
        if self.ca_file is not None and not self.address.secure:
            raise ValueError("a CA file only applies to an https:// control plane URL")

    @property
    def address(self) -> ControlPlaneAddress:
        """The parsed ``control_plane`` URL."""
        return parse_control_plane_url(self.control_plane)
