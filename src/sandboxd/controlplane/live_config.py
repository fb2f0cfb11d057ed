"""Profiles, bindings, quotas and overcommit changed on a running control plane.

Why: an administrator changing a profile's ceiling or a team's quota must not restart the
control plane (and with it every open exec and log stream). ``sandboxd config apply FILE``
sends the YAML text; it is validated exactly as at start-up (:func:`parse_config`), and then
either all of it takes effect or none of it:

1. parse and validate; a bad file is refused with every problem and its line, nothing else
   happens;
2. store it as the newest revision (a control plane restarted without ``--config`` comes back
   with it); a failed write changes nothing in memory either;
3. swap it in with no ``await`` in between: the registry's bindings and overcommit ratios,
   the quotas; the next Start sees the new profiles, running sandboxes keep the limits they
   started with (their specs are their own);
4. tell every connected runner its new warm pools, overcommit ratios and profile names (a
   repeated ``Registered`` on its control stream; a runner away now gets them when it
   registers again).

Which configuration a starting control plane uses: ``--config FILE`` when given (stored as a
revision when it differs from the newest, so ``config show`` tells the truth), else the newest
applied revision, else the embedded default.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from google.protobuf import timestamp_pb2

from sandboxd.config import ConfigError, PlatformConfig, parse_config
from sandboxd.config.loader import DEFAULT_CONFIG_NAME
from sandboxd.controlplane.quotas import Quotas
from sandboxd.controlplane.registry import RunnerRegistry, RunnerState
from sandboxd.controlplane.warm_pools import warm_pool_specs
from sandboxd.errors import invalid_argument
from sandboxd.store.config_store import AppliedConfig, ConfigStore
from sandboxd.store.schema import DatabaseProblem
from sandboxd_protocol.sandboxd_v1 import runner_pb2

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20
"""The largest configuration text accepted (1 MiB: thousands of profiles and runners)."""


@dataclass(frozen=True)
class LiveRevision:
    """The configuration in use: its text, revision (0: never stored), source and time."""

    text: str
    revision: int
    source: str
    applied_at: datetime | None


def embedded_text() -> str:
    """The embedded default configuration's YAML."""
    return resources.files("sandboxd.config").joinpath(DEFAULT_CONFIG_NAME).read_text()


def startup_config(
    store: ConfigStore, config_path: Path | None, given: PlatformConfig
) -> tuple[PlatformConfig, LiveRevision]:
    """Decide the configuration a starting control plane uses (see the module docstring).

    ``given`` is what the command line loaded (``--config FILE`` or the embedded default).
    A stored revision that no longer validates stops the start with one line that says so.
    """
    if config_path is not None:
        text = config_path.read_text()
        latest = store.latest()
        if latest is not None and latest.text == text:
            return given, _live(latest)
        return given, _live(store.save(text, f"--config {config_path}"))
    latest = store.latest()
    if latest is None:
        return given, LiveRevision(embedded_text(), 0, f"<embedded {DEFAULT_CONFIG_NAME}>", None)
    try:
        config = parse_config(latest.text, f"<applied revision {latest.revision}>")
    except ConfigError as exc:
        raise DatabaseProblem(
            f"the configuration applied last (revision {latest.revision}) is no longer valid "
            f"({exc}); start with --config FILE"
        ) from None
    return config, _live(latest)


def _live(applied: AppliedConfig) -> LiveRevision:
    return LiveRevision(applied.text, applied.revision, applied.source, applied.applied_at)


class LiveConfig:
    """Applies configuration revisions to the registry and quotas, one at a time."""

    def __init__(
        self,
        registry: RunnerRegistry,
        quotas: Quotas,
        store: ConfigStore,
        heartbeat_interval: float,
        current: LiveRevision,
    ) -> None:
        self._registry = registry
        self._quotas = quotas
        self._store = store
        self._heartbeat_ms = int(heartbeat_interval * 1000)
        self._current = current
        self._lock = asyncio.Lock()

    @property
    def current(self) -> LiveRevision:
        """The configuration in use now."""
        return self._current

    async def apply(self, text: str, source: str) -> tuple[LiveRevision, PlatformConfig]:
        """Validate, store and swap in ``text``; INVALID_ARGUMENT (field ``text``) if bad."""
        if len(text.encode()) > MAX_CONFIG_BYTES:
            raise invalid_argument("text", f"longer than {MAX_CONFIG_BYTES} bytes")
        name = source or "<config apply>"
        try:
            config = parse_config(text, name)
        except ConfigError as exc:
            raise invalid_argument("text", str(exc)) from None
        async with self._lock:
            applied = await asyncio.to_thread(self._store.save, text, name)
            # From here to the end, no await: a Start sees the old configuration or the new.
            self._registry.reload(config)
            self._quotas.reconfigure(config.quotas)
            self._current = _live(applied)
            told = sum(self._tell(state) for state in self._registry.iter_from())
        log.warning(
            "configuration revision %d applied from %s (%d profiles, %d runner entries); "
            "%d connected runner(s) told",
            applied.revision,
            name,
            len(config.profiles),
            len(config.runners),
            told,
        )
        return self._current, config

    def _tell(self, state: RunnerState) -> bool:
        """Queue the runner's new settings on its control stream; False if it is away."""
        if state.link is None or state.connection_id is None:
            return False
        connected_at = timestamp_pb2.Timestamp()
        connected_at.FromDatetime(state.connected_at.astimezone(UTC))
        state.link.outbox.put_nowait(
            runner_pb2.ControlMessage(
                registered=runner_pb2.Registered(
                    connected_at=connected_at,
                    heartbeat_interval_ms=self._heartbeat_ms,
                    profile_names=state.profile_names,
                    runner_group_id=state.runner_group_id,
                    cpu_overcommit_ratio=state.overcommit.cpu,
                    memory_overcommit_ratio=state.overcommit.memory,
                    warm_pools=warm_pool_specs(state.profiles),
                )
            )
        )
        return True
