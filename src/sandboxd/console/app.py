"""The console's HTTP API and static front end (a Starlette application).

Why a JSON API under ``/api/`` beside static files: the front end is a bundled single page
(``web/``), built once and served as files; everything it shows comes from these routes,
which answer with data only (never HTML built from sandbox-controlled text). Every route but
sign-in needs a session; every platform call presents the session's API key to the gRPC API.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from sandboxd.console.platform import Platform, PlatformError, SandboxFilter, StartSpec
from sandboxd.console.security import BoundaryMiddleware, OriginPolicy
from sandboxd.console.sessions import LoginLimiter, Session, SessionStore
from sandboxd.console.stats import StatsSource
from sandboxd.console.streams import logs_socket, terminal_socket
from sandboxd.controlplane.identity_service import IdentityService
from sandboxd.errors import ApiError

SESSION_COOKIE = "sandboxd_console"
MAX_BODY_BYTES = 64 * 1024
MAX_FIELD_CHARS = 4096
STATIC_DIR = Path(__file__).resolve().parent / "static"
NOT_BUILT = (
    "The console's front end is not built. Run scripts/setup.sh (or `npm ci && npm run build` "
    "in web/), then restart.\n"
)


@dataclass
class ConsoleContext:
    """What the routes share: the platform, sessions, the key checker and the stats source."""

    platform: Platform
    identity: IdentityService
    sessions: SessionStore
    limiter: LoginLimiter
    stats: StatsSource | None
    secure_cookie: bool = False


Handler = Callable[[Request, Session], Awaitable[Any]]


def _error(status: int, message: str, code: str = "") -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def session_of(ctx: ConsoleContext, connection: HTTPConnection) -> Session | None:
    """The live session the request's cookie names, if any."""
    return ctx.sessions.get(connection.cookies.get(SESSION_COOKIE))


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; a form or another type is refused (no CSRF by forms)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise PlatformError(415, "body: send application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PlatformError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise PlatformError(400, "body: not valid JSON") from None
    if not isinstance(value, dict):
        raise PlatformError(400, "body: expected a JSON object")
    return value


def text_field(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    """A string field of the body, checked for type and length; errors name the field."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise PlatformError(400, f"{name}: expected a string")
    if len(value) > MAX_FIELD_CHARS:
        raise PlatformError(400, f"{name}: longer than {MAX_FIELD_CHARS} characters")
    if required and not value.strip():
        raise PlatformError(400, f"{name}: required")
    return value.strip()


def list_field(body: dict[str, Any], name: str) -> list[str]:
    """A list of strings (or one comma-separated string) from the body."""
    value = body.get(name, [])
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PlatformError(400, f"{name}: expected a list of strings")
    if sum(len(v) for v in value) > MAX_FIELD_CHARS:
        raise PlatformError(400, f"{name}: longer than {MAX_FIELD_CHARS} characters")
    return value


def build_app(
    ctx: ConsoleContext, policy: OriginPolicy, static_dir: Path = STATIC_DIR
) -> Starlette:
    """The console application: API routes, WebSockets, then the static front end."""

    def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            session = session_of(ctx, request)
            if session is None:
                return _error(401, "not signed in (or the session expired)", "UNAUTHENTICATED")
            try:
                result = await handler(request, session)
            except PlatformError as error:
                if error.http_status == 401:  # the key was revoked: the session ends with it
                    ctx.sessions.end(session.session_id)
                return _error(error.http_status, error.message, error.code)
            return result if isinstance(result, Response) else JSONResponse(result)

        return route

    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        wait = ctx.limiter.wait(client)
        if wait:
            return JSONResponse(
                {"error": f"too many sign-in attempts; try again in {wait:.0f}s"},
                status_code=429,
                headers={"retry-after": str(max(1, round(wait)))},
            )
        try:
            key = text_field(await json_body(request), "api_key", required=True)
            caller = await ctx.identity.authenticate_key(key)
        except PlatformError as error:
            ctx.limiter.failed(client)
            return _error(error.http_status, error.message)
        except ApiError as error:
            ctx.limiter.failed(client)
            return _error(401, error.message, "UNAUTHENTICATED")
        session = ctx.sessions.create(key, caller.key_id, caller.organization, caller.role.value)
        response = JSONResponse(_who(session))
        response.set_cookie(
            SESSION_COOKIE,
            session.session_id,
            httponly=True,
            samesite="strict",
            secure=ctx.secure_cookie,
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        ctx.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def whoami(request: Request, session: Session) -> Any:
        return _who(session)

    async def runners(request: Request, session: Session) -> Any:
        return {"runners": await ctx.platform.runners(session.api_key)}

    async def runner_action(request: Request, session: Session) -> Any:
        body = await json_body(request)
        deadline = body.get("deadline_seconds", 0)
        if not isinstance(deadline, int) or not 0 <= deadline <= 7 * 24 * 3600:
            raise PlatformError(400, "deadline_seconds: a whole number of seconds, 0 to 604800")
        return await ctx.platform.runner_action(
            session.api_key,
            request.path_params["runner_id"],
            request.path_params["action"],
            deadline,
        )

    async def profiles(request: Request, session: Session) -> Any:
        return {"profiles": await ctx.platform.profiles(session.api_key)}

    async def sandboxes(request: Request, session: Session) -> Any:
        query = request.query_params
        wanted = SandboxFilter(
            status=query.get("status", "").strip().lower(),
            tag=query.get("tag", "").strip(),
            profile=query.get("profile", "").strip(),
        )
        return {"sandboxes": await ctx.platform.sandboxes(session.api_key, wanted)}

    async def start(request: Request, session: Session) -> Any:
        body = await json_body(request)
        spec = StartSpec(
            image=text_field(body, "image") or "python:3.11",
            command=text_field(body, "command"),
            args=list_field(body, "args"),
            tags=list_field(body, "tags"),
            profile=text_field(body, "profile"),
        )
        return await ctx.platform.start(session.api_key, spec)

    async def sandbox(request: Request, session: Session) -> Any:
        return await ctx.platform.sandbox(session.api_key, request.path_params["sandbox_id"])

    async def stop(request: Request, session: Session) -> Any:
        await json_body(request)
        return await ctx.platform.stop(session.api_key, request.path_params["sandbox_id"])

    async def events(request: Request, session: Session) -> Any:
        after = request.query_params.get("after", "0")
        if not after.isdigit():
            raise PlatformError(400, "after: a sequence number (0 or more)")
        sandbox_id = request.path_params["sandbox_id"]
        return {"events": await ctx.platform.events(session.api_key, sandbox_id, int(after))}

    async def stats(request: Request, session: Session) -> Any:
        found = await ctx.platform.sandbox(session.api_key, request.path_params["sandbox_id"])
        read = None
        if ctx.stats is not None:
            read = await ctx.stats(found.get("runner_id", ""), found["sandbox_id"])
        if read is None:
            return {"available": False, "status": found.get("sandbox_status", "")}
        return {
            "available": True,
            "status": found.get("sandbox_status", ""),
            "cpu_seconds": read.cpu_seconds,
            "memory_bytes": read.memory_bytes,
            "memory_peak_bytes": read.memory_peak_bytes,
            "pids": read.pids,
            "disk_bytes": read.disk_bytes,
            "oom_kills": read.oom_kills,
        }

    async def not_built(request: Request) -> Response:
        return PlainTextResponse(NOT_BUILT, status_code=503)

    routes: list[Any] = [
        Route("/api/session", login, methods=["POST"]),
        Route("/api/session/logout", logout, methods=["POST"]),
        Route("/api/session", signed_in(whoami), methods=["GET"]),
        Route("/api/runners", signed_in(runners), methods=["GET"]),
        Route("/api/runners/{runner_id}/{action:str}", signed_in(runner_action), methods=["POST"]),
        Route("/api/profiles", signed_in(profiles), methods=["GET"]),
        Route("/api/sandboxes", signed_in(sandboxes), methods=["GET"]),
        Route("/api/sandboxes", signed_in(start), methods=["POST"]),
        Route("/api/sandboxes/{sandbox_id}", signed_in(sandbox), methods=["GET"]),
        Route("/api/sandboxes/{sandbox_id}/stop", signed_in(stop), methods=["POST"]),
        Route("/api/sandboxes/{sandbox_id}/events", signed_in(events), methods=["GET"]),
        Route("/api/sandboxes/{sandbox_id}/stats", signed_in(stats), methods=["GET"]),
        WebSocketRoute(
            "/api/sandboxes/{sandbox_id}/logs",
            lambda ws: logs_socket(ws, ctx.platform, session_of(ctx, ws)),
        ),
        WebSocketRoute(
            "/api/sandboxes/{sandbox_id}/terminal",
            lambda ws: terminal_socket(ws, ctx.platform, session_of(ctx, ws)),
        ),
    ]
    if (static_dir / "index.html").is_file():
        routes.append(Mount("/", StaticFiles(directory=static_dir, html=True)))
    else:
        routes.append(Route("/", not_built))
    return Starlette(routes=routes, middleware=[Middleware(BoundaryMiddleware, policy=policy)])


def _who(session: Session) -> dict[str, Any]:
    return {
        "key_id": session.key_id,
        "organization": session.organization,
        "role": session.role,
        "is_admin": session.is_admin,
    }
