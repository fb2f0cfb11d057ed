"""How the client reaches a control plane, for tools built on it (``sandboxd``'s admin CLI).

Why public: ``sandboxd runners``, ``sandboxd config`` and the other admin commands are clients
of the control plane too, and must find it, authenticate and trust its certificate exactly as
``cwsandbox`` does (the same ``CWSANDBOX_BASE_URL``, ``CWSANDBOX_API_KEY`` and
``CWSANDBOX_CA_FILE``). They use these names rather than the client's private modules.
"""

from __future__ import annotations

from cwsandbox._channel import open_channel, unary_call
from cwsandbox._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    CA_FILE_ENV,
    DEFAULT_BASE_URL,
    Endpoint,
    resolve_endpoint,
)

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CA_FILE_ENV",
    "DEFAULT_BASE_URL",
    "Endpoint",
    "open_channel",
    "resolve_endpoint",
    "unary_call",
]
