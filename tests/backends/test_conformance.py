"""Every conformance check, against every backend that has a harness fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sandboxd.backends import backend_names
from sandboxd.backends.conformance import CHECKS, Harness

# backend name -> harness fixture; a new backend adds its fixture in conftest.py
HARNESSES = {"local": "local_harness"}


def test_every_builtin_backend_has_a_harness() -> None:
    assert set(backend_names()) == set(HARNESSES)


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    fixture: Harness = request.getfixturevalue(HARNESSES[request.param])
    return fixture


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(
    aio: asyncio.Runner, harness: Harness, check: Callable[[Harness], Awaitable[None]]
) -> None:
    aio.run(asyncio.wait_for(check(harness), 120))
