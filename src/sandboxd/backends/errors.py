"""Exceptions raised by sandbox backends.

The tree (every backend raises only these; the runner maps them to ``CWSANDBOX_*`` reasons
in one place)::

    BackendError
    ├── BackendUnavailable        the backend cannot run here (not root, no cgroups, ...)
    ├── InvalidSpec               a SandboxSpec field is unusable; ``.field`` names it
    ├── ImageUnavailable          the spec's image is not one this backend has; ``.image``
    ├── SandboxExists             create() with an id that is already in use
    ├── SandboxNotFound           no sandbox with that id
    ├── SandboxNotRunning         exec/file op on a sandbox whose main process has ended
    ├── SandboxStartError         create() or start() failed; nothing is left behind
    │   └── RunnerExhausted       ... because the runner ran out of ``.resource`` (disk, ...)
    ├── VolumeNotFound            a persistent volume's directory is missing on this runner
    └── FileOperationError        a file helper failed; ``.path``, ``.errno``
        ├── FileNotFound
        ├── FileIsDirectory
        ├── FilePermissionDenied  (also: read-only mounted files, read-only filesystems)
        ├── ParentNotFound        write_file() into a directory that does not exist
        └── FileTooLarge          ``.size`` and ``.max_size`` in bytes
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class of every backend error."""


class BackendUnavailable(BackendError):
    """The backend cannot work on this host; the message says why."""


class VolumeNotFound(BackendError):
    """A persistent volume's directory does not exist on this runner."""


class InvalidSpec(BackendError, ValueError):
    """A sandbox spec value cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ImageUnavailable(BackendError):
    """The spec names an image this backend does not have; the message says how to get it."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(message)
        self.image = image


class SandboxExists(BackendError):
    """A sandbox with this id already exists."""


class SandboxNotFound(BackendError):
    """No sandbox with this id is known to the backend."""


class SandboxNotRunning(BackendError):
    """The sandbox's main process has ended (or it was stopped)."""


class SandboxPaused(SandboxNotRunning):
    """The sandbox is paused (its processes frozen): nothing can run in it until resumed."""


class PauseUnsupported(BackendError):
    """The backend, or the sandbox, cannot be paused; the message says why."""


class SandboxStartError(BackendError):
    """Creating or starting the sandbox failed."""


class RunnerExhausted(SandboxStartError):
    """The runner has none left of something the control plane does not count.

    ``resource`` names it: ``disk`` (the filesystem of the writable layers), ``network``
    (the subnets of the sandbox network pool), ``user_ids`` (the user id ranges),
    ``cgroups`` (the kernel makes no more). Why a
    class of its own: such a runner fails every start placed on it, and as each failure
    gives its reservation back it stays the least loaded runner, so placement sent it every
    Start of the cluster. Reported as ``RESOURCE_EXHAUSTED`` with the reason
    ``CWSANDBOX_RUNNER_CAPACITY_EXHAUSTED``, it counts against the runner, and placement
    backs it off after a few (``start_backoff.py``) and sends Starts to the others.
    """

    def __init__(self, resource: str, message: str) -> None:
        super().__init__(message)
        self.resource = resource


class FileOperationError(BackendError):
    """A file helper failed inside the sandbox."""

    def __init__(self, path: str, message: str, errno: int | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.errno = errno


class FileNotFound(FileOperationError):
    """The file does not exist in the sandbox."""


class FileIsDirectory(FileOperationError):
    """The path names a directory."""


class FilePermissionDenied(FileOperationError):
    """The sandbox's own user may not do this (or the file is read-only)."""


class ParentNotFound(FileOperationError):
    """The parent directory of the file to write does not exist."""


class FileTooLarge(FileOperationError):
    """The file is larger than the caller's limit."""

    def __init__(self, path: str, size: int, max_size: int) -> None:
        super().__init__(path, f"file is {size} bytes, limit {max_size}")
        self.size = size
        self.max_size = max_size
