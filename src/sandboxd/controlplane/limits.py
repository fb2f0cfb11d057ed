"""Size limits on everything a client controls that reaches a runner, checked before any work.

Why: DESIGN.md rule 10, "limits are enforced before work is done". A request is refused
with INVALID_ARGUMENT and a BadRequest violation naming the field (``sandboxd.errors``)
before anything is placed, reserved, stored or sent. The runner checks the same limits again
(``check_runner_spec``, ``check_runner_exec``), so a control plane bug or an older control
plane cannot push an oversized message into a sandbox's agent.

**The binding constraint is the agent protocol.** The local backend hands an exec to the
sandbox's agent, and a create to its zygote, as *one* SOCK_SEQPACKET JSON message of at most
:data:`AGENT_MESSAGE_BYTES` (``backends/local/protocol.MAX_MESSAGE``); a longer one is cut
and kills the receiver. JSON escaping (``json.dumps``, ``ensure_ascii``) turns one byte of a
client's string into at most :data:`JSON_WORST_CASE_EXPANSION` bytes (a control character
becomes a six-byte ``u00XX`` escape; other characters at most triple). So the
client-controlled bytes of one message may be at most::

    PAYLOAD_BYTES = (AGENT_MESSAGE_BYTES - STRUCTURE_RESERVE) // JSON_WORST_CASE_EXPANSION
                  = (4 MiB - 64 KiB) // 6 = 688,128 (672 KiB)

where :data:`STRUCTURE_RESERVE` covers keys, punctuation and what the runner adds (host
paths of the state directory, rootfs, cgroups and netns, one host path per mounted file, the
default environment): about 20 KiB at the counts allowed below (4096 args × 3 bytes, 512
variables × 6, 17 files × ~170, ~2 KiB fixed). Worst cases, all in control characters:

* exec: argv + env together at most 672 KiB → 6 × 688,128 ≈ 3.94 MiB, plus ≈ 15 KiB of
  structure, within the 4 MiB message;
* create: command, environment, mount paths and working directory together at most
  672 KiB → the same bound, plus ≈ 20 KiB of structure.

Each argument and each variable is also capped at Linux's own per-string limit
(``MAX_ARG_STRLEN``, 128 KiB with its NUL), so what passes here is never refused by
``execve`` with E2BIG; the total stays below Linux's usual ``ARG_MAX`` (2 MiB).

``tests/backends/test_local_limits.py`` sends both worst cases to a real sandbox.

**Aligning with the agent.** The byte limits derive from :data:`AGENT_MESSAGE_BYTES`; when
the agent accepts longer messages, raise it to match (never above) and they scale (1 MiB
gives 170 KiB of payload, in line with Linux's 128 KiB per argument). A test fails if it
is ever larger than the agent's ``MAX_MESSAGE``. The counts stay fixed.

Limits that do not reach the agent (tags, names, image, annotations, mounted file contents,
which travel as files) keep records, listings and the runner stream small.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sandboxd.errors import ApiError, invalid_argument
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from sandboxd_protocol.v1beta2 import gateway_pb2, streaming_pb2

__all__ = [
    "AGENT_MESSAGE_BYTES",
    "JSON_WORST_CASE_EXPANSION",
    "MAX_FILE_PATH_CHARS",
    "PAYLOAD_BYTES",
    "STRUCTURE_RESERVE",
    "FieldNames",
    "LimitExceeded",
    "check_exec",
    "check_exec_init",
    "check_runner_exec",
    "check_runner_spec",
    "check_start",
    "check_start_request",
]

KiB = 1024
MiB = 1024 * KiB

AGENT_MESSAGE_BYTES = 4 * MiB
"""The agent's and zygote's message limit (``backends/local/protocol.MAX_MESSAGE``)."""
JSON_WORST_CASE_EXPANSION = 6
"""JSON bytes per byte of a client string, at worst (a control character's escape)."""
STRUCTURE_RESERVE = 64 * KiB
"""Room in one agent message for keys, punctuation and what the runner adds."""
PAYLOAD_BYTES = (AGENT_MESSAGE_BYTES - STRUCTURE_RESERVE) // JSON_WORST_CASE_EXPANSION
"""Client-controlled bytes one agent message can carry: 672 KiB for 4 MiB messages."""
LINUX_MAX_ARG_STRLEN = 128 * KiB - 1
"""The longest single argument or ``NAME=value`` string ``execve`` accepts (plus a NUL)."""

MAX_ARGS = 4096
"""Arguments of one exec or start command (program included): a long file list fits."""
MAX_ARG_BYTES = min(PAYLOAD_BYTES // 2, LINUX_MAX_ARG_STRLEN)
"""One argument (128 KiB): a whole script passed with ``sh -c`` / ``python -c``."""
MAX_ARGV_BYTES = PAYLOAD_BYTES * 3 // 4
"""All arguments of one command together (504 KiB)."""
MAX_ENV_ENTRIES = 512
"""Environment variables of one exec or sandbox."""
MAX_ENV_NAME_BYTES = 128
"""One variable name; real names are short, and a long one is a mistake or an attack."""
MAX_ENV_VALUE_BYTES = min(PAYLOAD_BYTES // 2, LINUX_MAX_ARG_STRLEN - MAX_ENV_NAME_BYTES - 1)
"""One variable's value (about 128 KiB: ``NAME=value`` must fit ``execve``'s limit)."""
MAX_ENV_BYTES = PAYLOAD_BYTES // 2
"""All names and values together (336 KiB)."""
MAX_PATH_BYTES = 256
"""A mount path or working directory (a deeper path is never needed to place a file)."""
MAX_FILE_PATH_CHARS = 4096
"""A file path of the file API (PATH_MAX). Its agent message has room for the worst case:
4096 astral characters are 16 KiB of UTF-8 and 48 KiB of JSON (two six-byte escapes each)."""
MAX_MOUNTED_FILES = 16
"""Files placed at start; more belong in an image or a file upload."""
MAX_MOUNTED_FILE_BYTES = 16 * MiB
"""One mounted file: it is written to disk before the sandbox starts, holding the create."""
MAX_MOUNTED_BYTES = 32 * MiB
"""All mounted files together, as the unary file API (they share the runner's stream)."""
MAX_TAGS = 32
"""Tags of one sandbox (stored, listed and matched on every List)."""
MAX_TAG_BYTES = 128
"""One tag."""
MAX_NAMES = 16
"""Profile names/ids, or runner ids, one start may choose from."""
MAX_NAME_BYTES = 128
"""One profile name or id, runner id, or network mode."""
MAX_IMAGE_BYTES = 256
"""An image reference (registry, repository and tag; digests are 71 bytes)."""
MAX_EXPOSED_PORTS = 32
"""Exposed ports: each one is a listener and a relay on the runner."""
MAX_ANNOTATIONS = 64
"""Pod annotations (accepted for compatibility, not used by this server)."""
MAX_ANNOTATION_BYTES = 16 * KiB
"""All annotation keys and values together."""


class LimitExceeded(ValueError):
    """A request field is too large: ``field`` names it as the request spells it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def api_error(self) -> ApiError:
        """The INVALID_ARGUMENT the control plane answers with."""
        return invalid_argument(self.field, self.problem)


def _size(text: str) -> int:
    return len(text.encode())


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


@dataclass(frozen=True)
class FieldNames:
    """How one message names its fields (public request, or the runner's own)."""

    argv: str
    arg: Callable[[int], str]
    env: str
    mounts: str = "mounted_files"
    mount_path: Callable[[int], str] = lambda i: f"mounted_files[{i}].mount_path"
    mount_content: Callable[[int], str] = lambda i: f"mounted_files[{i}].file_content"
    workdir: str = "working_dir"


def _start_arg(index: int) -> str:
    return "command" if index == 0 else f"args[{index - 1}]"


PUBLIC_START = FieldNames("args", _start_arg, "environment_variables")
PUBLIC_EXEC = FieldNames("init.command", lambda i: f"init.command[{i}]", "init.env")
RUNNER_START = FieldNames(
    "command",
    lambda i: f"command[{i}]",
    "environment",
    mount_path=lambda i: f"mounted_files[{i}].path",
    mount_content=lambda i: f"mounted_files[{i}].content",
)
RUNNER_EXEC = FieldNames("command", lambda i: f"command[{i}]", "env")


def _check_argv(argv: Sequence[str], names: FieldNames) -> int:
    if len(argv) > MAX_ARGS:
        raise LimitExceeded(names.argv, f"at most {MAX_ARGS} arguments (got {len(argv)})")
    total = 0
    for index, arg in enumerate(argv):
        size = _size(arg)
        if size > MAX_ARG_BYTES:
            raise LimitExceeded(
                names.arg(index), f"one argument may hold at most {MAX_ARG_BYTES} bytes ({size})"
            )
        total += size
    if total > MAX_ARGV_BYTES:
        raise LimitExceeded(
            names.argv, f"all arguments together may hold at most {MAX_ARGV_BYTES} bytes ({total})"
        )
    return total


def _check_env(env: Mapping[str, str], names: FieldNames) -> int:
    if len(env) > MAX_ENV_ENTRIES:
        raise LimitExceeded(names.env, f"at most {MAX_ENV_ENTRIES} variables (got {len(env)})")
    total = 0
    for name, value in env.items():
        if _size(name) > MAX_ENV_NAME_BYTES:
            raise LimitExceeded(
                names.env, f"variable name {_short(name)} is longer than {MAX_ENV_NAME_BYTES} bytes"
            )
        if _size(value) > MAX_ENV_VALUE_BYTES:
            raise LimitExceeded(
                names.env,
                f"the value of {_short(name)} is longer than {MAX_ENV_VALUE_BYTES} bytes",
            )
        total += _size(name) + _size(value)
    if total > MAX_ENV_BYTES:
        raise LimitExceeded(
            names.env, f"names and values together may hold at most {MAX_ENV_BYTES} bytes ({total})"
        )
    return total


def _over_payload(field: str, used: int) -> LimitExceeded:
    return LimitExceeded(
        field,
        f"command, environment and paths of one request may hold at most {PAYLOAD_BYTES} "
        f"bytes together ({used})",
    )


def check_exec(argv: Sequence[str], env: Mapping[str, str], names: FieldNames) -> None:
    """An exec's argv and environment; raises :class:`LimitExceeded`."""
    used = _check_argv(argv, names)
    used += _check_env(env, names)
    if used > PAYLOAD_BYTES:
        raise _over_payload(names.env, used)


def check_start(
    argv: Sequence[str],
    env: Mapping[str, str],
    mounts: Sequence[tuple[str, int]],
    names: FieldNames,
    workdir: str = "",
) -> None:
    """A start's command, environment, mounted files ``(path, size)`` and working directory."""
    used = _check_argv(argv, names) + _check_env(env, names)
    if used > PAYLOAD_BYTES:
        raise _over_payload(names.env, used)
    if len(mounts) > MAX_MOUNTED_FILES:
        raise LimitExceeded(names.mounts, f"at most {MAX_MOUNTED_FILES} files (got {len(mounts)})")
    total = 0
    for index, (path, size) in enumerate(mounts):
        if _size(path) > MAX_PATH_BYTES:
            raise LimitExceeded(names.mount_path(index), f"longer than {MAX_PATH_BYTES} bytes")
        used += _size(path)
        if used > PAYLOAD_BYTES:
            raise _over_payload(names.mount_path(index), used)
        if size > MAX_MOUNTED_FILE_BYTES:
            raise LimitExceeded(
                names.mount_content(index),
                f"one mounted file may hold at most {MAX_MOUNTED_FILE_BYTES} bytes ({size})",
            )
        total += size
        if total > MAX_MOUNTED_BYTES:
            raise LimitExceeded(
                names.mount_content(index),
                f"mounted files may hold at most {MAX_MOUNTED_BYTES} bytes in all",
            )
    if _size(workdir) > MAX_PATH_BYTES:
        raise LimitExceeded(names.workdir, f"longer than {MAX_PATH_BYTES} bytes")
    if used + _size(workdir) > PAYLOAD_BYTES:
        raise _over_payload(names.workdir, used + _size(workdir))


def _check_list(field: str, values: Sequence[str], count: int, size: int, what: str) -> None:
    if len(values) > count:
        raise LimitExceeded(field, f"at most {count} {what} (got {len(values)})")
    for value in values:
        if _size(value) > size:
            raise LimitExceeded(field, f"{_short(value)} is longer than {size} bytes")


def _check_map_total(field: str, values: Mapping[str, str], count: int, size: int) -> None:
    if len(values) > count:
        raise LimitExceeded(field, f"at most {count} entries (got {len(values)})")
    total = sum(_size(k) + _size(v) for k, v in values.items())
    if total > size:
        raise LimitExceeded(field, f"keys and values may hold at most {size} bytes ({total})")


def _public_start(request: gateway_pb2.StartSandboxRequest) -> None:
    argv = [request.command, *request.args]
    mounts = [(m.mount_path, len(m.file_content)) for m in request.mounted_files]
    check_start(argv, request.environment_variables, mounts, PUBLIC_START)
    _check_list("tags", request.tags, MAX_TAGS, MAX_TAG_BYTES, "tags")
    _check_list("profile_names", request.profile_names, MAX_NAMES, MAX_NAME_BYTES, "names")
    _check_list("profile_ids", request.profile_ids, MAX_NAMES, MAX_NAME_BYTES, "ids")
    _check_list("runner_ids", request.runner_ids, MAX_NAMES, MAX_NAME_BYTES, "ids")
    _check_list("container_image", [request.container_image], 1, MAX_IMAGE_BYTES, "images")
    for mode in ("egress_mode", "ingress_mode"):
        value = getattr(request.network, mode)
        _check_list(f"network.{mode}", [value], 1, MAX_NAME_BYTES, "modes")
    ports = len(request.network.exposed_ports) + len(request.ports)
    if ports > MAX_EXPOSED_PORTS:
        raise LimitExceeded("network.exposed_ports", f"at most {MAX_EXPOSED_PORTS} ports ({ports})")
    _check_map_total(
        "pod_annotations", request.pod_annotations, MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES
    )


def check_start_request(request: gateway_pb2.StartSandboxRequest) -> None:
    """Every size of a public Start; raises ApiError (INVALID_ARGUMENT naming the field)."""
    try:
        _public_start(request)
    except LimitExceeded as exc:
        raise exc.api_error() from None


def check_exec_init(init: streaming_pb2.ExecStreamInit) -> None:
    """Every size of a StreamExec ``init``; raises ApiError naming the field."""
    try:
        check_exec(init.command, init.env, PUBLIC_EXEC)
    except LimitExceeded as exc:
        raise exc.api_error() from None


def check_runner_spec(spec: runner_pb2.SandboxSpec) -> None:
    """The runner's re-check of a start; raises :class:`LimitExceeded` (runner field names)."""
    mounts = [(f.path, len(f.content)) for f in spec.mounted_files]
    check_start(spec.command, spec.environment, mounts, RUNNER_START, spec.working_dir)


def check_runner_exec(command: runner_pb2.OpenExec) -> None:
    """The runner's re-check of an exec; raises :class:`LimitExceeded`."""
    check_exec(command.command, command.env, RUNNER_EXEC)
