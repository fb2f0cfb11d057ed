"""``@session.function()``: run a Python function in a fresh sandbox and get its result.

Each call needs no RPC beyond what a sandbox already offers (protocol §5.4): Start a
session-owned sandbox, AddFile a JSON payload (the function's source, what it refers to,
and the call's arguments) to ``<temp_dir>/sandbox_payload_<hex>.json``, exec
``python -c <runner> payload result``, RetrieveFile ``<temp_dir>/sandbox_result_<hex>.json``,
and Stop. JSON rather than pickle keeps the sandbox independent of the caller's Python and
libraries; the price is that arguments and results must be JSON values (tuples come back as
lists). A function that raises comes back as ``FunctionError`` with the remote traceback.
Shipped code is compiled with postponed annotations, so type hints naming things that were
not shipped (``Any``, the caller's classes) never matter in the sandbox.
"""

from __future__ import annotations

import inspect
import json
import logging
import shlex
import types
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from cwsandbox import _loop
from cwsandbox._exec import run_exec
from cwsandbox._files import read_file, write_file
from cwsandbox._function_source import FunctionSource, collect
from cwsandbox._operation import OperationRef
from cwsandbox._streams import StreamReader
from cwsandbox.exceptions import AsyncFunctionError, FunctionError, SandboxFileError

if TYPE_CHECKING:
    from cwsandbox._sandbox import Sandbox
    from cwsandbox._session import Session

__all__ = ["RUNNER", "RemoteFunction"]

P = ParamSpec("P")
R = TypeVar("R")
_log = logging.getLogger("cwsandbox")

#: Runs inside the sandbox: ``python -c RUNNER <payload.json> <result.json>``.
RUNNER = """\
import __future__, importlib, json, sys, traceback
def _main(payload_path, result_path):
    with open(payload_path) as f:
        p = json.load(f)
    ns = {"__name__": "__cwsandbox_remote__", "__builtins__": __builtins__}
    try:
        for alias, module, attr in p["imports"]:
            obj = importlib.import_module(module)
            for part in (attr.split(".") if attr else ()):
                obj = getattr(obj, part)
            ns[alias] = obj
        ns.update(p["constants"])
        for filename, line, source in p["sources"]:
            code = compile("\\n" * (line - 1) + source, filename, "exec",
                           flags=__future__.annotations.compiler_flag, dont_inherit=True)
            exec(code, ns)
        for alias, name in p["aliases"]:
            ns[alias] = ns[name]
        value = ns[p["name"]](*p["args"], **p["kwargs"])
        try:
            text = json.dumps({"ok": True, "result": value})
        except (TypeError, ValueError) as e:
            raise TypeError("the function's result is not JSON-serializable: %s" % e) from None
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next  # the runner's own frames tell the caller nothing
        text = json.dumps({"ok": False, "type": type(e).__qualname__, "message": str(e),
                           "traceback": "".join(traceback.format_exception(type(e), e, tb))})
    with open(result_path, "w") as f:
        f.write(text)
_main(sys.argv[1], sys.argv[2])
"""
#: How much of the runner's output a failure message quotes.
_QUOTE_CHARS = 4000


def _remote_error(outcome: dict[str, Any], name: str) -> FunctionError:
    kind, message = str(outcome.get("type", "Exception")), str(outcome.get("message", ""))
    trace = str(outcome.get("traceback", "")).rstrip()
    text = f"remote function {name!r} raised {kind}: {message}"
    if trace:
        text += f"\n\nRemote traceback:\n{trace}"
    return FunctionError(
        text, exception_type=kind, exception_message=message, remote_traceback=trace
    )


class RemoteFunction(Generic[P, R]):
    """A function that runs in its own sandbox: ``.remote()``, ``.map()``, or ``.local()``.

    The function must be synchronous; its arguments and result must be JSON values.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        session: Session,
        container_image: str | None = None,
        temp_dir: str = "/tmp",
        profile_ids: list[str] | None = None,
        profile_names: list[str] | None = None,
        runner_ids: list[str] | None = None,
        resources: Any = None,
        mounted_files: list[dict[str, Any]] | None = None,
        s3_mount: dict[str, Any] | None = None,
        ports: list[dict[str, Any]] | None = None,
        network: Any = None,
        file_system_snapshot: Any = None,
        max_timeout_seconds: int | None = None,
        environment_variables: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise AsyncFunctionError(
                f"{getattr(fn, '__qualname__', fn)!r} is async; remote functions must be "
                "regular (sync) functions"
            )
        if not isinstance(fn, types.FunctionType):
            raise TypeError(f"@session.function() needs a plain function, not {type(fn).__name__}")
        if not isinstance(temp_dir, str) or not temp_dir.startswith("/"):
            raise ValueError(f"temp_dir must be an absolute path, got {temp_dir!r}")
        self._source: FunctionSource = collect(fn)
        self._fn: Callable[P, R] = cast("Callable[P, R]", fn)
        self._session = session
        self._temp_dir = temp_dir.rstrip("/") or "/"
        self._sandbox_options: dict[str, Any] = {
            "container_image": container_image,
            "profile_ids": profile_ids,
            "profile_names": profile_names,
            "runner_ids": runner_ids,
            "resources": resources,
            "mounted_files": mounted_files,
            "s3_mount": s3_mount,
            "ports": ports,
            "network": network,
            "file_system_snapshot": file_system_snapshot,
            "max_timeout_seconds": max_timeout_seconds,
            "environment_variables": environment_variables,
            "annotations": annotations,
        }
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<RemoteFunction {self.__qualname__}>"

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function here, without a sandbox (for tests and debugging)."""
        return self._fn(*args, **kwargs)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> OperationRef[R]:
        """Run the function in a new sandbox; the ref resolves to its return value."""
        try:
            payload = json.dumps({**self._source.payload(), "args": args, "kwargs": kwargs})
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"arguments of remote function {self.__name__!r} must be JSON-serializable: {err}"
            ) from None
        sandbox = self._session.sandbox(**self._sandbox_options)
        return OperationRef(_loop.submit(self._call(sandbox, payload.encode())))

    def map(self, items: Iterable[tuple[Any, ...]]) -> list[OperationRef[R]]:
        """Run the function once per item (a tuple of arguments), all at once, in parallel."""
        refs: list[OperationRef[R]] = []
        for item in items:
            args = item if isinstance(item, tuple) else (item,)
            call: Callable[..., OperationRef[R]] = self.remote
            refs.append(call(*args))
        return refs

    async def _mkdir(self, sandbox: Sandbox, sid: str) -> None:
        out: StreamReader[str] = StreamReader()
        err: StreamReader[str] = StreamReader()
        await run_exec(
            sandbox._life.transport,
            sid,
            ["mkdir", "-p", "--", self._temp_dir],
            cwd=None,
            timeout=sandbox._request_timeout,
            connect_timeout=sandbox._request_timeout,
            check=True,
            stdout=out,
            stderr=err,
            stdin=None,
        )

    async def _call(self, sandbox: Sandbox, payload: bytes) -> R:
        life = sandbox._life
        timeout = sandbox._request_timeout
        token = uuid.uuid4().hex
        payload_path = f"{self._temp_dir}/sandbox_payload_{token}.json"
        result_path = f"{self._temp_dir}/sandbox_result_{token}.json"
        try:
            sid = await life.ensure_running()
            try:
                await write_file(life, payload_path, payload, timeout)
            except SandboxFileError as missing_dir:
                if missing_dir.reason != "CWSANDBOX_FILE_NOT_FOUND":
                    raise
                await self._mkdir(sandbox, sid)  # a server whose AddFile makes no parents
                await write_file(life, payload_path, payload, timeout)
            argv = ["python", "-c", RUNNER, payload_path, result_path]
            out: StreamReader[str] = StreamReader()
            err: StreamReader[str] = StreamReader()
            run = await run_exec(
                life.transport,
                sid,
                argv,
                cwd=None,
                timeout=timeout,
                connect_timeout=timeout,
                check=False,
                stdout=out,
                stderr=err,
                stdin=None,
            )
            if run.stdout:
                _log.debug("remote function %s printed: %s", self.__name__, run.stdout)
            try:
                raw = await read_file(life, result_path, timeout)
            except SandboxFileError as missing:
                detail = (run.stderr or run.stdout)[-_QUOTE_CHARS:].strip()
                raise FunctionError(
                    f"remote function {self.__name__!r} left no result "
                    f"(exit code {run.returncode}): {detail or missing}"
                ) from None
            try:
                outcome = json.loads(raw)
            except ValueError as bad:
                raise FunctionError(f"unreadable result of {self.__name__!r}: {bad}") from None
            if outcome.get("ok"):
                return cast("R", outcome.get("result"))
            raise _remote_error(outcome, self.__name__)
        finally:
            try:
                await sandbox._stop_and_close(missing_ok=True, graceful_shutdown_seconds=1.0)
            except Exception as exc:  # the result matters more than the cleanup
                _log.warning(
                    "could not stop the sandbox of %s: %s", shlex.quote(self.__name__), exc
                )
            self._session._forget(sandbox)
