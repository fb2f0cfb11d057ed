"""``sandboxd.admin.v1.AdminService``: keys, join tokens, runner credentials, orphans, runners.

Why no role check here: the interceptor lets only ``admin`` keys reach this service
(:mod:`sandboxd.controlplane.auth`), in one place for every admin RPC, present and future.
Secrets appear only in the Create responses; listings show public ids.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sandboxd.controlplane.identity_service import IdentityService
from sandboxd.controlplane.lifecycle import Lifecycle
from sandboxd.controlplane.live_config import LiveConfig, LiveRevision
from sandboxd.controlplane.operations import Operations
from sandboxd.controlplane.orphans import Orphans
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.controlplane.runner_lifecycle import RunnerLifecycle, RunnerLifecycleState
from sandboxd.controlplane.secret_admin import SecretAdmin
from sandboxd.controlplane.secrets import Secrets
from sandboxd.controlplane.wire_time import timestamp_or_none as _stamp
from sandboxd.errors import ApiError, abort_with, invalid_argument
from sandboxd.identity.model import ApiKeyInfo, JoinTokenInfo, Role, RunnerCredentialInfo
from sandboxd.store.sandbox_store import Orphan
from sandboxd_protocol.sandboxd_v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")

ROLES = {admin_pb2.ROLE_ADMIN: Role.ADMIN, admin_pb2.ROLE_MEMBER: Role.MEMBER}
ROLE_NUMBERS = {role: number for number, role in ROLES.items()}


def key_message(key: ApiKeyInfo) -> admin_pb2.ApiKey:
    """The wire form of a key (never its secret)."""
    return admin_pb2.ApiKey(
        key_id=key.key_id,
        organization=key.organization,
        role=ROLE_NUMBERS[key.role],
        name=key.name,
        created_at=_stamp(key.created_at),
        revoked_at=_stamp(key.revoked_at),
    )


def token_message(token: JoinTokenInfo) -> admin_pb2.JoinToken:
    """The wire form of a join token (never its secret)."""
    return admin_pb2.JoinToken(
        token_id=token.token_id,
        runner_group_id=token.runner_group_id,
        runner_id=token.runner_id,
        max_uses=token.max_uses,
        uses=token.uses,
        created_at=_stamp(token.created_at),
        expires_at=_stamp(token.expires_at),
        revoked_at=_stamp(token.revoked_at),
    )


def credential_message(credential: RunnerCredentialInfo) -> admin_pb2.RunnerCredential:
    """The wire form of a runner credential (never its secret)."""
    return admin_pb2.RunnerCredential(
        runner_id=credential.runner_id,
        credential_id=credential.credential_id,
        runner_group_id=credential.runner_group_id,
        token_id=credential.token_id,
        created_at=_stamp(credential.created_at),
        revoked_at=_stamp(credential.revoked_at),
    )


def orphan_message(orphan: Orphan) -> admin_pb2.Orphan:
    """The wire form of an orphan."""
    return admin_pb2.Orphan(
        sandbox_id=orphan.sandbox_id,
        runner_id=orphan.runner_id,
        phase=orphan.phase,
        exit_code=orphan.exit_code,
        reason=orphan.reason,
        runner_cluster_id=orphan.runner_cluster_id,
        first_seen=_stamp(orphan.first_seen),
        last_seen=_stamp(orphan.last_seen),
    )


def lifecycle_message(state: RunnerLifecycleState) -> admin_pb2.RunnerLifecycle:
    """The wire form of a runner's cordon and drain state."""
    return admin_pb2.RunnerLifecycle(
        runner_id=state.runner_id,
        cordoned=state.cordoned,
        draining=state.draining,
        drain_deadline=_stamp(state.drain_deadline),
        live_sandboxes=state.live_sandboxes,
        healthy=state.healthy,
        failed_starts=state.failed_starts,
        last_start_failure=state.last_start_failure,
        backed_off_until=_stamp(state.backed_off_until),
    )


def revision_message(live: LiveRevision) -> admin_pb2.ConfigRevision:
    """The wire form of the configuration in use."""
    return admin_pb2.ConfigRevision(
        revision=live.revision,
        text=live.text,
        source=live.source,
        applied_at=_stamp(live.applied_at),
    )


def _role(number: int) -> Role:
    if number == admin_pb2.ROLE_UNSPECIFIED:
        return Role.MEMBER
    role: Role | None = ROLES.get(number)  # type: ignore[call-overload]
    if role is None:
        raise invalid_argument("role", f"unknown role {number}; use ROLE_ADMIN or ROLE_MEMBER")
    return role


class AdminService(SecretAdmin, admin_pb2_grpc.AdminServiceServicer):
    """Administration over the :class:`IdentityService`, the registry and the lifecycle."""

    def __init__(
        self,
        identity: IdentityService,
        registry: RunnerRegistry,
        lifecycle: Lifecycle,
        operations: Operations,
        *,
        runners: RunnerLifecycle,
        config: LiveConfig | None,
        secrets: Secrets | None = None,
    ) -> None:
        self._identity = identity
        self._secrets = secrets
        self._registry = registry
        self._lifecycle = lifecycle
        self._operations = operations
        self._runners = runners
        self._config = config
        self._orphans = Orphans(lifecycle.records, registry)

    async def _run(self, context: Context, work: Callable[[], Awaitable[R]]) -> R:
        try:
            return await work()
        except ApiError as error:
            await abort_with(context, error)
        except Exception as exc:  # a bug of ours: log it, answer INTERNAL, keep serving
            log.exception("admin call failed")
            await abort_with(
                context, ApiError(grpc.StatusCode.INTERNAL, f"internal error in sandboxd: {exc}")
            )

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        """A new key; its secret is in this response only."""

        async def work() -> admin_pb2.CreateApiKeyResponse:
            key, secret = await self._identity.create_key(
                request.organization, _role(request.role), request.name
            )
            log.info("API key %s created for %s (%s)", key.key_id, key.organization, key.role)
            return admin_pb2.CreateApiKeyResponse(key=key_message(key), secret=secret)

        return await self._run(context, work)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        """Keys, oldest first."""

        async def work() -> admin_pb2.ListApiKeysResponse:
            keys = await self._identity.list_keys(request.organization, request.include_revoked)
            return admin_pb2.ListApiKeysResponse(keys=[key_message(k) for k in keys])

        return await self._run(context, work)

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_pb2.RevokeApiKeyResponse:
        """Revoke a key: the next call with it is refused."""

        async def work() -> admin_pb2.RevokeApiKeyResponse:
            key = await self._identity.revoke_key(request.key_id)
            log.info("API key %s revoked", key.key_id)
            return admin_pb2.RevokeApiKeyResponse(key=key_message(key))

        return await self._run(context, work)

    async def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: Context
    ) -> admin_pb2.CreateJoinTokenResponse:
        """A new join token; its secret is in this response only."""

        async def work() -> admin_pb2.CreateJoinTokenResponse:
            options: dict[str, Any] = {
                "runner_group_id": request.runner_group_id,
                "runner_id": request.runner_id,
            }
            if request.max_uses:
                options["max_uses"] = request.max_uses
            if request.ttl_seconds:
                options["ttl_seconds"] = request.ttl_seconds
            token, secret = await self._identity.create_join_token(**options)
            log.info("join token %s created (%d uses)", token.token_id, token.max_uses)
            return admin_pb2.CreateJoinTokenResponse(token=token_message(token), secret=secret)

        return await self._run(context, work)

    async def ListJoinTokens(
        self, request: admin_pb2.ListJoinTokensRequest, context: Context
    ) -> admin_pb2.ListJoinTokensResponse:
        """Tokens, oldest first."""

        async def work() -> admin_pb2.ListJoinTokensResponse:
            tokens = await self._identity.list_join_tokens(request.include_spent)
            return admin_pb2.ListJoinTokensResponse(tokens=[token_message(t) for t in tokens])

        return await self._run(context, work)

    async def RevokeJoinToken(
        self, request: admin_pb2.RevokeJoinTokenRequest, context: Context
    ) -> admin_pb2.RevokeJoinTokenResponse:
        """Revoke a token; runners that joined with it keep their own credentials."""

        async def work() -> admin_pb2.RevokeJoinTokenResponse:
            token = await self._identity.revoke_join_token(request.token_id)
            return admin_pb2.RevokeJoinTokenResponse(token=token_message(token))

        return await self._run(context, work)

    async def ListRunnerCredentials(
        self, request: admin_pb2.ListRunnerCredentialsRequest, context: Context
    ) -> admin_pb2.ListRunnerCredentialsResponse:
        """Runner credentials in runner-id order."""

        async def work() -> admin_pb2.ListRunnerCredentialsResponse:
            found = await self._identity.list_runner_credentials(request.include_revoked)
            return admin_pb2.ListRunnerCredentialsResponse(
                credentials=[credential_message(c) for c in found]
            )

        return await self._run(context, work)

    async def RevokeRunner(
        self, request: admin_pb2.RevokeRunnerRequest, context: Context
    ) -> admin_pb2.RevokeRunnerResponse:
        """Revoke a runner: refuse its calls, drop its connection, fail its live sandboxes.

        Its sandboxes are marked FAILED because nothing it reports about them, or serves from
        them, can be trusted any more; their records stay readable.
        """

        async def work() -> admin_pb2.RevokeRunnerResponse:
            credential = await self._identity.revoke_runner(request.runner_id)
            runner = self._registry.get(credential.runner_id)
            if runner is not None and runner.link is not None:
                runner.link.close()  # ends its Connect stream; its redial is refused
            self._operations.close_runner(credential.runner_id)
            failed = await self._lifecycle.fail_runner_sandboxes(
                credential.runner_id, "its runner's credential was revoked"
            )
            log.warning("runner %s revoked (%d sandboxes failed)", credential.runner_id, failed)
            return admin_pb2.RevokeRunnerResponse(
                credential=credential_message(credential), failed_sandboxes=failed
            )

        return await self._run(context, work)

    async def ListOrphans(
        self, request: admin_pb2.ListOrphansRequest, context: Context
    ) -> admin_pb2.ListOrphansResponse:
        """Sandboxes runners hold that no record here owns, by runner then id."""

        async def work() -> admin_pb2.ListOrphansResponse:
            found = await self._orphans.list(request.runner_id)
            return admin_pb2.ListOrphansResponse(orphans=[orphan_message(o) for o in found])

        return await self._run(context, work)

    async def AdoptOrphan(
        self, request: admin_pb2.AdoptOrphanRequest, context: Context
    ) -> admin_pb2.AdoptOrphanResponse:
        """Make an orphan an ordinary sandbox of an organization."""

        async def work() -> admin_pb2.AdoptOrphanResponse:
            record = await self._orphans.adopt(request.sandbox_id, request.organization)
            return admin_pb2.AdoptOrphanResponse(
                sandbox_id=record.sandbox_id,
                runner_id=record.runner_id,
                organization=record.owner_org,
            )

        return await self._run(context, work)

    async def DeleteOrphan(
        self, request: admin_pb2.DeleteOrphanRequest, context: Context
    ) -> admin_pb2.DeleteOrphanResponse:
        """Destroy an orphan on its runner, now or when the runner next registers."""

        async def work() -> admin_pb2.DeleteOrphanResponse:
            orphan, confirmed = await self._orphans.delete(request.sandbox_id)
            return admin_pb2.DeleteOrphanResponse(
                sandbox_id=orphan.sandbox_id, runner_id=orphan.runner_id, confirmed=confirmed
            )

        return await self._run(context, work)

    async def CordonRunner(
        self, request: admin_pb2.CordonRunnerRequest, context: Context
    ) -> admin_pb2.RunnerLifecycle:
        """No new sandboxes on the runner (its own keep running)."""

        async def work() -> admin_pb2.RunnerLifecycle:
            return lifecycle_message(await self._runners.cordon(request.runner_id))

        return await self._run(context, work)

    async def UncordonRunner(
        self, request: admin_pb2.UncordonRunnerRequest, context: Context
    ) -> admin_pb2.RunnerLifecycle:
        """Placement may pick the runner again; a drain ends."""

        async def work() -> admin_pb2.RunnerLifecycle:
            return lifecycle_message(await self._runners.uncordon(request.runner_id))

        return await self._run(context, work)

    async def DrainRunner(
        self, request: admin_pb2.DrainRunnerRequest, context: Context
    ) -> admin_pb2.RunnerLifecycle:
        """Cordon the runner; its sandboxes still running at the deadline are stopped."""

        async def work() -> admin_pb2.RunnerLifecycle:
            state = await self._runners.drain(
                request.runner_id, request.deadline_seconds, request.grace_seconds
            )
            return lifecycle_message(state)

        return await self._run(context, work)

    async def GetRunnerLifecycle(
        self, request: admin_pb2.GetRunnerLifecycleRequest, context: Context
    ) -> admin_pb2.RunnerLifecycle:
        """Where a runner stands: cordoned, draining, how many sandboxes it still holds."""

        async def work() -> admin_pb2.RunnerLifecycle:
            return lifecycle_message(self._runners.state(request.runner_id))

        return await self._run(context, work)

    async def RemoveRunner(
        self, request: admin_pb2.RemoveRunnerRequest, context: Context
    ) -> admin_pb2.RemoveRunnerResponse:
        """Forget a disconnected runner (refused while it has sandboxes, unless told)."""

        async def work() -> admin_pb2.RemoveRunnerResponse:
            failed = await self._runners.remove(request.runner_id, request.fail_sandboxes)
            return admin_pb2.RemoveRunnerResponse(
                runner_id=request.runner_id, failed_sandboxes=failed
            )

        return await self._run(context, work)

    def _live(self) -> LiveConfig:
        if self._config is None:  # pragma: no cover - set before the server starts
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "the control plane is still starting")
        return self._config

    async def ApplyConfig(
        self, request: admin_pb2.ApplyConfigRequest, context: Context
    ) -> admin_pb2.ApplyConfigResponse:
        """Validate and apply a whole configuration (profiles, bindings, quotas, overcommit)."""

        async def work() -> admin_pb2.ApplyConfigResponse:
            live = self._live()
            revision, config = await live.apply(request.text, request.source)
            return admin_pb2.ApplyConfigResponse(
                revision=revision_message(revision),
                profiles=len(config.profiles),
                runner_entries=len(config.runners),
                default_bindings=len(config.default_bindings),
                runners_told=sum(
                    1 for r in self._registry.iter_from() if self._registry.is_healthy(r)
                ),
            )

        return await self._run(context, work)

    async def GetConfig(
        self, request: admin_pb2.GetConfigRequest, context: Context
    ) -> admin_pb2.ConfigRevision:
        """The configuration in use, with its revision and where it came from."""

        async def work() -> admin_pb2.ConfigRevision:
            return revision_message(self._live().current)

        return await self._run(context, work)
