"""Fixtures for the sandbox-half client tests.

``gateway`` starts the in-process stand-in (``gateway_standin``): a stand-in for client-side
unit tests only, not the real control plane, which the e2e tests exercise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cwsandbox._session import _OPEN
from tests.unit.client.sandbox.gateway_standin import Gateway, start_gateway


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """A running stand-in with ``CWSANDBOX_BASE_URL`` pointing at it and no API key set."""
    server, gw = start_gateway()
    monkeypatch.setenv("CWSANDBOX_BASE_URL", gw.url)
    monkeypatch.delenv("CWSANDBOX_API_KEY", raising=False)
    try:
        yield gw
    finally:
        for session in list(_OPEN):  # close leftovers while the stand-in still answers
            session.close().result(timeout=30)
        server.stop(grace=None)
