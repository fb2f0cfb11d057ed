"""Runner settings validation, control-plane URL parsing and reconnect backoff."""

from __future__ import annotations

import os
import random

import pytest

from sandboxd.runner.backoff import Backoff
from sandboxd.runner.settings import ControlPlaneAddress, RunnerSettings, parse_control_plane_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:50051", ControlPlaneAddress("127.0.0.1:50051", secure=False)),
        ("http://cp.internal:8080/", ControlPlaneAddress("cp.internal:8080", secure=False)),
        ("https://cp.example.com", ControlPlaneAddress("cp.example.com:443", secure=True)),
        ("https://cp.example.com:8443", ControlPlaneAddress("cp.example.com:8443", secure=True)),
        ("http://[::1]:50051", ControlPlaneAddress("[::1]:50051", secure=False)),
        ("http://localhost", ControlPlaneAddress("localhost:80", secure=False)),
    ],
)
def test_parse_control_plane_url(url, address):
    assert parse_control_plane_url(url) == address


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:50051",
        "grpc://127.0.0.1:50051",
        "http://",
        "http://host:port",
        "http://host:1/api",
        "http://user:pw@host:1",
        "http://host:1?x=1",
    ],
)
def test_bad_control_plane_urls(url):
    with pytest.raises(ValueError, match="control plane URL"):
        parse_control_plane_url(url)


def test_settings_defaults(tmp_path):
    settings = RunnerSettings(control_plane="http://127.0.0.1:1", state_dir=tmp_path)
    assert settings.runner_id is None
    assert settings.runner_group_id == "default"
    assert settings.tags == ()
    assert settings.heartbeat_interval == 2.0
    assert (settings.reconnect_backoff_min, settings.reconnect_backoff_max) == (0.2, 5.0)
    assert settings.address.target == "127.0.0.1:1"
    assert RunnerSettings(control_plane="http://h:1").state_dir.name == "runner"
    assert settings.max_concurrent_creates == 2 * len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "overrides",
    [
        {"control_plane": "ftp://h"},
        {"heartbeat_interval": 0},
        {"reconnect_backoff_min": 0},
        {"reconnect_backoff_min": 6.0},
        {"runner_group_id": ""},
        {"register_timeout": -1},
        {"keepalive_interval": 0},
        {"max_concurrent_creates": 0},
    ],
)
def test_settings_validation(tmp_path, overrides):
    fields = {"control_plane": "http://127.0.0.1:1", "state_dir": tmp_path, **overrides}
    with pytest.raises(ValueError):
        RunnerSettings(**fields)


def test_backoff_grows_jittered_up_to_the_maximum_and_resets():
    backoff = Backoff(0.2, 5.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] == pytest.approx(0.2)
    for attempt, delay in enumerate(delays):
        base = min(5.0, 0.2 * 2**attempt)
        assert max(0.2, base / 2) <= delay <= base
    assert max(delays[6:]) <= 5.0
    assert len(set(delays[6:])) > 1, "delays at the cap are still jittered"
    backoff.reset()
    assert backoff.next() == pytest.approx(0.2)


def test_backoff_validates_bounds():
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
