"""Fixtures for the client unit tests (see ``client_standin`` for the stand-in server).

The stand-in server is for client-side unit tests only; end-to-end tests against the real
sandboxd control plane live in ``tests/e2e``.
"""

from tests.unit.client.client_standin import closed_port_url, rpc_error, standin

__all__ = ["closed_port_url", "rpc_error", "standin"]
