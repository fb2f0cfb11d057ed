"""Where the client connects and with which credentials.

Configuration is read from the environment at call time, not import time, so a program (or
a test) can change ``CWSANDBOX_BASE_URL`` / ``CWSANDBOX_API_KEY`` / ``CWSANDBOX_CA_FILE``
between calls. The parsed
address is a small immutable ``Endpoint`` so that it can be validated once per call and then
passed around without re-parsing.

Our default base URL is the local ``sandboxd up`` address, not the hosted service: this
client is meant for self-hosted control planes first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CA_FILE_ENV",
    "DEFAULT_BASE_URL",
    "DISCOVERY_TIMEOUT_SECONDS",
    "MAX_MESSAGE_BYTES",
    "Endpoint",
    "auth_metadata",
    "resolve_endpoint",
    "tls_credentials",
]

BASE_URL_ENV = "CWSANDBOX_BASE_URL"
API_KEY_ENV = "CWSANDBOX_API_KEY"
CA_FILE_ENV = "CWSANDBOX_CA_FILE"
DEFAULT_BASE_URL = "http://127.0.0.1:50051"

#: Total deadline for one discovery call, shared by all of its pages (and, for
#: ``list_runners`` with a mode filter, by the extra ListProfiles pages). Read at call time,
#: so assigning to ``cwsandbox._config.DISCOVERY_TIMEOUT_SECONDS`` changes the default.
DISCOVERY_TIMEOUT_SECONDS = 30.0

#: gRPC send and receive limit, the same as the official client's.
MAX_MESSAGE_BYTES = 100 * 1024 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Endpoint:
    """A validated control-plane address.

    ``base_url`` is the URL as the user wrote it (minus a trailing ``/``), kept for error
    messages so they name what the user configured; ``target`` is the ``host:port`` string
    gRPC dials.
    """

    base_url: str
    host: str
    port: int
    secure: bool

    @property
    def target(self) -> str:
        """The gRPC target, ``host:port``, with IPv6 literals in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Validate ``url`` per the protocol's rules and return the endpoint.

        Only ``http://`` (plaintext h2c) and ``https://`` (TLS) are allowed, and the URL may
        carry no path other than ``/``, no query, no fragment and no credentials: a gRPC
        server is addressed by host and port alone. Raises ``ValueError`` saying what is wrong.
        """
        text = url.strip()
        if not text:
            raise ValueError("base URL must not be empty (e.g. http://127.0.0.1:50051)")
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise ValueError(f"base URL {text!r} is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"base URL {text!r} must start with http:// or https:// "
                "(e.g. http://127.0.0.1:50051)"
            )
        if parts.path not in ("", "/"):
            raise ValueError(
                f"base URL {text!r} must not have a path ({parts.path!r}): "
                "gRPC servers are addressed by scheme, host and port only"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"base URL {text!r} must not have a query string or fragment")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"base URL {text!r} must not contain credentials; set {API_KEY_ENV} instead"
            )
        host = parts.hostname
        if not host:
            raise ValueError(f"base URL {text!r} has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"base URL {text!r} has an invalid port (use 1-65535)") from None
        if port == 0:
            raise ValueError(f"base URL {text!r} has an invalid port (use 1-65535)")
        return cls(
            base_url=text.rstrip("/"),
            host=host,
            port=port if port is not None else _DEFAULT_PORTS[scheme],
            secure=scheme == "https",
        )


def resolve_endpoint(base_url: str | None = None) -> Endpoint:
    """Return the endpoint to use: ``base_url`` if given, else ``$CWSANDBOX_BASE_URL``, else local.

    An empty environment variable counts as unset. A bad value raises ``ValueError`` naming
    where it came from, so a typo in the environment is easy to find.
    """
    if base_url is not None:
        return Endpoint.parse(base_url)
    from_env = os.environ.get(BASE_URL_ENV, "")
    if not from_env.strip():
        return Endpoint.parse(DEFAULT_BASE_URL)
    try:
        return Endpoint.parse(from_env)
    except ValueError as exc:
        raise ValueError(f"invalid {BASE_URL_ENV}: {exc}") from None


def auth_metadata() -> tuple[tuple[str, str], ...]:
    """Return the call metadata carrying the API key, or nothing when no key is set.

    Read on every call so that rotating the key in the environment takes effect at once. An
    unset or blank key sends no header at all (a local sandboxd needs none).
    """
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        return ()
    return (("authorization", f"Bearer {key}"),)


def tls_credentials() -> grpc.ChannelCredentials:
    """TLS credentials for an ``https://`` endpoint: ``$CWSANDBOX_CA_FILE`` or the system roots.

    A CA file (PEM) is for a control plane whose certificate a private CA signed (or that is
    self-signed). Without it gRPC uses its default roots, which
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` overrides (that is also how the official client is
    pointed at a private CA). An unreadable file raises ``ValueError`` naming the variable.
    """
    path = os.environ.get(CA_FILE_ENV, "").strip()
    if not path:
        return grpc.ssl_channel_credentials()
    try:
        with open(path, "rb") as handle:
            roots = handle.read()
    except OSError as exc:
        raise ValueError(f"invalid {CA_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(root_certificates=roots)
