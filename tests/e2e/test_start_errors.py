"""Our client's Start errors on a real ``sandboxd up``: they name the thing that is wrong.

A Start naming a profile or runner nobody has raises ``ProfileNotFoundError`` /
``RunnerNotFoundError`` (not ``SandboxNotFoundError``, which sent users looking for a sandbox
id they never had), and a refused size is shown in the units the user wrote.
"""

from __future__ import annotations

import pytest

from cwsandbox import (
    ProfileNotFoundError,
    RunnerNotFoundError,
    Sandbox,
    SandboxError,
    SandboxNotFoundError,
)
from tests.e2e.conftest import Platform


@pytest.fixture
def client_env(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    return platform


def test_an_unknown_profile_raises_profile_not_found(client_env: Platform) -> None:
    with pytest.raises(ProfileNotFoundError) as caught:
        Sandbox.run(profile_names=["no-such-profile"])
    assert caught.value.profile_name == "no-such-profile"
    assert "profile 'no-such-profile' not found" in str(caught.value)
    assert not isinstance(caught.value, SandboxNotFoundError)


def test_an_unknown_runner_raises_runner_not_found(client_env: Platform) -> None:
    with pytest.raises(RunnerNotFoundError) as caught:
        Sandbox.run(runner_ids=["no-such-runner"])
    assert caught.value.runner_id == "no-such-runner"


def test_an_oversized_request_is_refused_in_the_units_written(client_env: Platform) -> None:
    with pytest.raises(SandboxError) as caught:
        Sandbox.run(resources={"cpu": "1", "memory": "500Gi"})
    text = str(caught.value)
    assert "500Gi" in text, text
    assert "536870912000" not in text and " bytes" not in text, text
