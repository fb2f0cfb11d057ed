"""The sandboxd runner: join a control plane, stay joined, and run its sandbox commands.

The agent fingerprints the host and dials out; the supervisor runs sandboxes on a backend.

Public names are re-exported here; the CLI entry point is :data:`sandboxd.runner.cli.runner_command`
(import it from there so importing this package does not pull in click).
"""

from sandboxd.runner.agent import RunnerAgent, RunnerRejectedError
from sandboxd.runner.fingerprint import fingerprint
from sandboxd.runner.identity import resolve_runner_id
from sandboxd.runner.resources import InsufficientCapacityError, Reservation, ReservationLedger
from sandboxd.runner.sandboxes import SandboxSupervisor, build_local_backend
from sandboxd.runner.settings import RunnerSettings

__all__ = [
    "InsufficientCapacityError",
    "Reservation",
    "ReservationLedger",
    "RunnerAgent",
    "RunnerRejectedError",
    "RunnerSettings",
    "SandboxSupervisor",
    "build_local_backend",
    "fingerprint",
    "resolve_runner_id",
]
