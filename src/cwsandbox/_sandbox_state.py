"""What a ``Sandbox`` handle knows about its sandbox, and the read-only properties over it.

The state is updated only on the background loop (from Start, Get, List and Stop answers)
and read from any thread; each field is replaced whole, so readers never see a torn value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cwsandbox._status import SandboxStatus
from sandboxd_protocol.v1beta2 import gateway_pb2 as gw

__all__ = ["SandboxInfoMixin", "SandboxState"]

_S = gw.SandboxStatus


def _time(msg: Any, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    stamp = getattr(msg, name)
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def _resources(msg: gw.ResourceRequest) -> dict[str, str] | None:
    values = {k: getattr(msg, k) for k in ("cpu", "memory") if getattr(msg, k)}
    return values or None


@dataclass
class SandboxState:
    """Mutable facts about one sandbox, as last reported by the server."""

    sandbox_id: str | None = None
    status: SandboxStatus | None = None
    status_updated_at: datetime | None = None
    returncode: int | None = None
    started_at: datetime | None = None
    runner_id: str | None = None
    profile_id: str | None = None
    runner_group_id: str | None = None
    service_address: str | None = None
    exposed_ports: tuple[tuple[int, str], ...] | None = None
    applied_ingress_mode: str | None = None
    applied_egress_mode: str | None = None
    resource_limits: dict[str, str] | None = None
    resource_requests: dict[str, str] | None = None
    resource_gpu: dict[str, Any] | None = None
    file_system_snapshot_id: str | None = None
    #: The server's reason for the status (why it failed, say), from the last Get.
    status_reason: str | None = None
    #: This handle's ``stop()`` succeeded (so a later completion counts as termination).
    stopped_by_client: bool = False
    #: The sandbox is draining or over; operations are refused without an RPC.
    stopping: bool = False

    def set_status(self, status: SandboxStatus) -> None:
        self.status = status
        self.status_updated_at = datetime.now(UTC)
        if status is SandboxStatus.TERMINATING or status.is_terminal:
            self.stopping = True

    def apply_start(self, resp: gw.StartSandboxResponse) -> None:
        self.sandbox_id = resp.sandbox_id
        self.set_status(SandboxStatus.PENDING)
        self.service_address = resp.service_address or None
        if resp.exposed_ports:
            self.exposed_ports = tuple((p.container_port, p.name) for p in resp.exposed_ports)
        self.applied_ingress_mode = resp.applied_ingress_mode or None
        self.applied_egress_mode = resp.applied_egress_mode or None
        if resp.HasField("requested_resource_limits"):
            self.resource_limits = _resources(resp.requested_resource_limits)
            gpu = resp.requested_resource_limits.gpu
            if resp.requested_resource_limits.HasField("gpu"):
                spec: dict[str, Any] = {"count": gpu.gpu_count}
                if gpu.HasField("gpu_type"):
                    spec["type"] = gpu.gpu_type
                if gpu.HasField("gpu_memory_gb"):
                    spec["memory_gb"] = gpu.gpu_memory_gb
                self.resource_gpu = spec
        if resp.HasField("requested_resource_requests"):
            self.resource_requests = _resources(resp.requested_resource_requests)

    def _apply_common(self, msg: gw.GetSandboxResponse | gw.SandboxInfo) -> None:
        self.runner_id = msg.runner_id or self.runner_id
        self.profile_id = msg.profile_id or self.profile_id
        self.runner_group_id = msg.runner_group_id or self.runner_group_id
        self.started_at = _time(msg, "started_at_time") or self.started_at

    def apply_get(self, resp: gw.GetSandboxResponse, *, polling: bool) -> SandboxStatus:
        """Record a Get answer; in poll loops UNSPECIFIED means "exited cleanly" (§4.1)."""
        self._apply_common(resp)
        raw = resp.sandbox_status
        if polling and raw == _S.SANDBOX_STATUS_UNSPECIFIED:
            status = SandboxStatus.COMPLETED
        else:
            status = SandboxStatus.from_proto(raw)
        self.set_status(status)
        self.status_reason = resp.status_reason or None
        if status is SandboxStatus.COMPLETED and resp.HasField("exit_code"):
            self.returncode = resp.exit_code
        return status

    def apply_info(self, info: gw.SandboxInfo) -> None:
        self.sandbox_id = info.sandbox_id
        self._apply_common(info)
        self.set_status(SandboxStatus.from_proto(info.sandbox_status))
        self.service_address = info.service_address or None
        if info.exposed_ports:
            self.exposed_ports = tuple((p.container_port, p.name) for p in info.exposed_ports)
        self.applied_ingress_mode = info.applied_ingress_mode or None
        self.applied_egress_mode = info.applied_egress_mode or None


class SandboxInfoMixin:
    """Read-only properties of a sandbox handle, backed by ``self._state``."""

    _state: SandboxState

    @property
    def sandbox_id(self) -> str | None:
        """The server's id for the sandbox; ``None`` until it has been started."""
        return self._state.sandbox_id

    @property
    def status(self) -> SandboxStatus | None:
        """The last known status (no RPC; see ``get_status()``); ``None`` before start."""
        return self._state.status

    @property
    def status_updated_at(self) -> datetime | None:
        """When ``status`` last changed on this handle."""
        return self._state.status_updated_at

    @property
    def returncode(self) -> int | None:
        """The main process's exit code, once a poll has seen the sandbox COMPLETED."""
        return self._state.returncode

    @property
    def started_at(self) -> datetime | None:
        """When the server says the sandbox started."""
        return self._state.started_at

    @property
    def runner_id(self) -> str | None:
        """The runner the sandbox was placed on."""
        return self._state.runner_id

    @property
    def profile_id(self) -> str | None:
        """The profile the sandbox runs under."""
        return self._state.profile_id

    @property
    def runner_group_id(self) -> str | None:
        """The runner group of ``runner_id``."""
        return self._state.runner_group_id

    @property
    def service_address(self) -> str | None:
        """Where exposed ports can be reached, when ingress was requested."""
        return self._state.service_address

    @property
    def exposed_ports(self) -> tuple[tuple[int, str], ...] | None:
        """``(container_port, name)`` pairs the server exposed."""
        return self._state.exposed_ports

    @property
    def applied_ingress_mode(self) -> str | None:
        """The ingress mode the server applied."""
        return self._state.applied_ingress_mode

    @property
    def applied_egress_mode(self) -> str | None:
        """The egress mode the server applied."""
        return self._state.applied_egress_mode

    @property
    def resource_limits(self) -> dict[str, str] | None:
        """CPU/memory limits as echoed by the server."""
        return self._state.resource_limits

    @property
    def resource_requests(self) -> dict[str, str] | None:
        """CPU/memory requests as echoed by the server."""
        return self._state.resource_requests

    @property
    def resource_gpu(self) -> dict[str, Any] | None:
        """The GPU ask as echoed by the server (``count`` plus ``type`` or ``memory_gb``)."""
        return self._state.resource_gpu

    @property
    def file_system_snapshot_id(self) -> str | None:
        """The snapshot taken by ``stop(snapshot_on_stop=True)``, if any."""
        return self._state.file_system_snapshot_id
