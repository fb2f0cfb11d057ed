"""cwsandbox: Python client for sandboxd and other ``coreweave.sandbox.v1beta2`` servers.

The public API lives here; the ``_``-prefixed modules behind it are private and may change.
Discovery (``list_profiles``, ``get_profile``, ``list_runners``, ``get_runner``) tells you
where sandboxes can run; ``Sandbox.run`` starts one there, ``sandbox.exec`` runs commands in
it (``shell`` for a terminal, ``read_file``/``write_file`` and their streaming variants for
files, ``stream_logs`` for its output), and a ``Session`` applies ``SandboxDefaults`` to many
sandboxes, runs ``@session.function()`` functions in them, and stops them together.
The control plane is found through ``CWSANDBOX_BASE_URL`` (default
``http://127.0.0.1:50051``, where ``sandboxd up`` listens) and authenticated with
``CWSANDBOX_API_KEY`` when that is set.
"""

from __future__ import annotations

# First: they set gRPC's fork default and its transport before anything imports grpc (see
# the modules).
from cwsandbox import _fork_guard  # noqa: F401  # isort: skip
from cwsandbox import _grpc_transport  # noqa: F401  # isort: skip
from cwsandbox._attachments import FileSystemSnapshotOptions, Secret
from cwsandbox._defaults import SandboxDefaults
from cwsandbox._discovery import get_profile, get_runner, list_profiles, list_runners
from cwsandbox._exec import Process
from cwsandbox._format import format_bytes, format_cpu
from cwsandbox._functions import RemoteFunction
from cwsandbox._network import NetworkOptions
from cwsandbox._operation import OperationRef, Waitable, results, wait
from cwsandbox._resources import ResourceOptions
from cwsandbox._results import ProcessResult
from cwsandbox._sandbox import Sandbox
from cwsandbox._session import Session
from cwsandbox._snapshots import (
    FileSystemSnapshot,
    FileSystemSnapshotBucketConfig,
    FileSystemSnapshotStatus,
    FileSystemSnapshotTrigger,
)
from cwsandbox._status import SandboxStatus
from cwsandbox._streams import StreamReader, StreamWriter
from cwsandbox._terminal import TerminalResult, TerminalSession
from cwsandbox._types import (
    EgressMode,
    Profile,
    Runner,
    RunnerResources,
    ServiceExposureMode,
    WarmPool,
)
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
    "FileSystemSnapshot",
    "FileSystemSnapshotBucketConfig",
    "FileSystemSnapshotOptions",
    "FileSystemSnapshotStatus",
    "FileSystemSnapshotTrigger",
    "FunctionError",
    "NetworkOptions",
    "OperationRef",
    "Process",
    "ProcessResult",
    "Profile",
    "ProfileNotFoundError",
    "RemoteFunction",
    "ResourceOptions",
    "Runner",
    "RunnerNotFoundError",
    "RunnerResources",
    "Sandbox",
    "SandboxCommandTimeoutError",
    "SandboxDefaults",
    "SandboxError",
    "SandboxExecutionError",
    "SandboxFailedError",
    "SandboxFileError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxRequestTimeoutError",
    "SandboxResourceExhaustedError",
    "SandboxSnapshotError",
    "SandboxStatus",
    "SandboxStreamBackpressureError",
    "SandboxStreamTruncatedError",
    "SandboxTerminalStateUnavailableError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "Secret",
    "ServiceExposureMode",
    "Session",
    "SnapshotBackendThrottledError",
    "SnapshotBucketMismatchError",
    "SnapshotNotFoundError",
    "SnapshotNotReadyError",
    "SnapshotNotSupportedError",
    "SnapshotOnStopConflictError",
    "SnapshotQuotaExceededError",
    "SnapshotSizeExceededError",
    "SnapshotWaitTimeoutError",
    "StreamReader",
    "StreamWriter",
    "TerminalResult",
    "TerminalSession",
    "Waitable",
    "WarmPool",
    "__version__",
    "format_bytes",
    "format_cpu",
    "get_profile",
    "get_runner",
    "list_profiles",
    "list_runners",
    "results",
    "wait",
]
