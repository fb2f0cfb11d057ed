"""The exception tree: hierarchy, constructor pattern, attributes, pickling."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest

import cwsandbox
from cwsandbox import exceptions as exc

ALL = [getattr(exc, name) for name in exc.__all__]

PARENTS = {
    "CWSandboxAuthenticationError": "CWSandboxError",
    "DiscoveryError": "CWSandboxError",
    "RunnerNotFoundError": "DiscoveryError",
    "ProfileNotFoundError": "DiscoveryError",
    "SandboxError": "CWSandboxError",
    "SandboxNotFoundError": "SandboxError",
    "SandboxNotRunningError": "SandboxError",
    "SandboxUnavailableError": "SandboxNotRunningError",
    "SandboxFailedError": "SandboxError",
    "SandboxTerminatedError": "SandboxError",
    "SandboxTimeoutError": "SandboxError",
    "SandboxRequestTimeoutError": "SandboxTimeoutError",
    "SandboxCommandTimeoutError": "SandboxTimeoutError",
    "SandboxExecutionError": "SandboxError",
    "SandboxStreamBackpressureError": "SandboxExecutionError",
    "SandboxStreamTruncatedError": "SandboxExecutionError",
    "SandboxResourceExhaustedError": "SandboxError",
    "SandboxFileError": "SandboxError",
    "SandboxTerminalStateUnavailableError": "SandboxError",
    "SandboxSnapshotError": "SandboxError",
    "SnapshotNotFoundError": "SandboxSnapshotError",
    "SnapshotWaitTimeoutError": "SandboxTimeoutError",
    "SnapshotBackendThrottledError": "SandboxUnavailableError",
}

REQUIRED = {
    "RunnerNotFoundError": {"runner_id": "r1"},
    "ProfileNotFoundError": {"profile_name": "p"},
}


@pytest.mark.parametrize(("child", "parent"), sorted(PARENTS.items()))
def test_hierarchy(child: str, parent: str) -> None:
    assert issubclass(getattr(exc, child), getattr(exc, parent))


def test_auth_error_is_not_a_sandbox_or_discovery_error() -> None:
    assert not issubclass(exc.CWSandboxAuthenticationError, exc.SandboxError)
    assert not issubclass(exc.CWSandboxAuthenticationError, exc.DiscoveryError)
    assert not issubclass(exc.DiscoveryError, exc.SandboxError)


def test_every_exception_is_exported_from_the_package() -> None:
    for cls in ALL:
        assert getattr(cwsandbox, cls.__name__) is cls
        assert cls.__name__ in cwsandbox.__all__
        assert cls.__doc__


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_common_constructor_and_attributes(cls: type[exc.CWSandboxError]) -> None:
    extra = REQUIRED.get(cls.__name__, {})
    plain = cls("boom", **extra)
    assert str(plain) == "boom"
    assert plain.reason is None
    assert plain.metadata == {}
    assert plain.retry_delay is None
    full = cls(
        "boom",
        reason="CWSANDBOX_X",
        metadata={"k": "v"},
        retry_delay=timedelta(seconds=2),
        **extra,
    )
    assert (full.reason, full.metadata, full.retry_delay) == (
        "CWSANDBOX_X",
        {"k": "v"},
        timedelta(seconds=2),
    )
    clone = pickle.loads(pickle.dumps(full))
    assert type(clone) is cls
    assert str(clone) == "boom"
    assert vars(clone) == vars(full)


def test_context_attributes() -> None:
    assert exc.RunnerNotFoundError("m", runner_id="r9").runner_id == "r9"
    err = exc.ProfileNotFoundError("m", profile_name="p", runner_id="r1")
    assert (err.profile_name, err.runner_id) == ("p", "r1")
    assert exc.ProfileNotFoundError("m", profile_name="p").runner_id is None
    assert exc.SandboxNotFoundError("m", sandbox_id="s1").sandbox_id == "s1"
    assert exc.SandboxFileError("m", filepath="/tmp/x").filepath == "/tmp/x"
    assert exc.SandboxExecutionError("m", exec_result=42).exec_result == 42
    snap = exc.SnapshotNotFoundError("m", file_system_snapshot_id="fs1")
    assert snap.file_system_snapshot_id == "fs1"
    stream = exc.SandboxStreamTruncatedError("m", stream_code="STREAM_TRUNCATED")
    assert (stream.stream_code, stream.reason) == ("STREAM_TRUNCATED", "STREAM_TRUNCATED")


def test_metadata_is_copied() -> None:
    source = {"a": "b"}
    err = exc.CWSandboxError("m", metadata=source)
    source["a"] = "changed"
    assert err.metadata == {"a": "b"}


def test_tree_is_drawn_in_the_module_docstring() -> None:
    doc = exc.__doc__ or ""
    for cls in ALL:
        assert cls.__name__ in doc
