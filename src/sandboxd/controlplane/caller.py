"""Who the current call is from, resolved once by the interceptor and read by handlers.

Why a context variable: grpc.aio runs each call in its own task, and the interceptor
(:mod:`sandboxd.controlplane.auth`) wraps every handler so that the identity it resolved from
the call's metadata is set in that task before the handler runs. Handlers ask
:func:`current_caller` or :func:`current_runner` and never parse metadata themselves. Both
refuse when nothing was bound, so a handler reached without the interceptor fails closed.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from sandboxd.errors import unauthenticated
from sandboxd.identity.model import ADMIN_ORG, JoinTokenInfo, Role


@dataclass(frozen=True)
class Caller:
    """A client authenticated by an API key."""

    key_id: str
    organization: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """Admins see and act on every organization's sandboxes and call the admin API."""
        return self.role is Role.ADMIN

    def can_see(self, owner_organization: str) -> bool:
        """Whether a sandbox owned by ``owner_organization`` exists for this caller."""
        return self.is_admin or owner_organization == self.organization


# Every public call of a control plane started with --insecure-no-auth.
UNAUTHENTICATED_ADMIN = Caller(key_id="", organization=ADMIN_ORG, role=Role.ADMIN)


@dataclass(frozen=True)
class RunnerCaller:
    """A runner authenticated by its own credential, bound to ``runner_id``."""

    runner_id: str
    credential_id: str
    runner_group_id: str


@dataclass(frozen=True)
class JoiningRunner:
    """A new runner presenting a (still usable) join token; allowed only to register.

    ``proposed``: the credential the runner stored before joining, from its
    ``sandboxd-proposed-credential`` metadata ("" when it sent none); checked by the join.
    """

    token: JoinTokenInfo
    proposed: str = ""


Identity = Caller | RunnerCaller | JoiningRunner

_current: ContextVar[Identity | None] = ContextVar("sandboxd_caller", default=None)


def bind(identity: Identity) -> None:
    """Make ``identity`` the current call's (the call's task context ends with the call)."""
    _current.set(identity)


def bound_identity() -> Identity | None:
    """Whoever the call being served is bound to, if any (for log lines; never for access)."""
    return _current.get()


def current_caller() -> Caller:
    """The API-key identity of the current public call; UNAUTHENTICATED if there is none."""
    identity = _current.get()
    if not isinstance(identity, Caller):
        raise unauthenticated("this call carries no API key; set CWSANDBOX_API_KEY")
    return identity


def current_runner() -> RunnerCaller | JoiningRunner:
    """The runner identity of the current runner call; UNAUTHENTICATED if there is none."""
    identity = _current.get()
    if not isinstance(identity, RunnerCaller | JoiningRunner):
        raise unauthenticated("this call carries no runner credential")
    return identity
