"""cwsandbox: Python client for sandboxd and other ``coreweave.sandbox.v1beta2`` servers.

The public API lives here; the ``_``-prefixed modules behind it are private and may change.
Discovery (``list_profiles``, ``get_profile``, ``list_runners``, ``get_runner``) tells you
where sandboxes can run. The control plane is found through ``CWSANDBOX_BASE_URL`` (default
``http://127.0.0.1:50051``, where ``sandboxd up`` listens) and authenticated with
``CWSANDBOX_API_KEY`` when that is set.
"""

from __future__ import annotations

from cwsandbox._discovery import get_profile, get_runner, list_profiles, list_runners
from cwsandbox._format import format_bytes, format_cpu
from cwsandbox._types import EgressMode, Profile, Runner, RunnerResources, ServiceExposureMode
from cwsandbox.exceptions import (
    AsyncFunctionError,
    CWSandboxAuthenticationError,
    CWSandboxError,
    DiscoveryError,
    FunctionError,
    ProfileNotFoundError,
    RunnerNotFoundError,
    SandboxCommandTimeoutError,
    SandboxError,
    SandboxExecutionError,
    SandboxFailedError,
    SandboxFileError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxRequestTimeoutError,
    SandboxResourceExhaustedError,
    SandboxSnapshotError,
    SandboxStreamBackpressureError,
    SandboxStreamTruncatedError,
    SandboxTerminalStateUnavailableError,
    SandboxTerminatedError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SnapshotBackendThrottledError,
    SnapshotBucketMismatchError,
    SnapshotNotFoundError,
    SnapshotNotReadyError,
    SnapshotNotSupportedError,
    SnapshotOnStopConflictError,
    SnapshotQuotaExceededError,
    SnapshotSizeExceededError,
    SnapshotWaitTimeoutError,
)

#: Version of this client package (sandboxd's), not of the official client it mirrors.
__version__ = "0.1.0"

__all__ = [
    "AsyncFunctionError",
    "CWSandboxAuthenticationError",
    "CWSandboxError",
    "DiscoveryError",
    "EgressMode",
    "FunctionError",
    "Profile",
    "ProfileNotFoundError",
    "Runner",
    "RunnerNotFoundError",
    "RunnerResources",
    "SandboxCommandTimeoutError",
    "SandboxError",
    "SandboxExecutionError",
    "SandboxFailedError",
    "SandboxFileError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxRequestTimeoutError",
    "SandboxResourceExhaustedError",
    "SandboxSnapshotError",
    "SandboxStreamBackpressureError",
    "SandboxStreamTruncatedError",
    "SandboxTerminalStateUnavailableError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "ServiceExposureMode",
    "SnapshotBackendThrottledError",
    "SnapshotBucketMismatchError",
    "SnapshotNotFoundError",
    "SnapshotNotReadyError",
    "SnapshotNotSupportedError",
    "SnapshotOnStopConflictError",
    "SnapshotQuotaExceededError",
    "SnapshotSizeExceededError",
    "SnapshotWaitTimeoutError",
    "__version__",
    "format_bytes",
    "format_cpu",
    "get_profile",
    "get_runner",
    "list_profiles",
    "list_runners",
]
