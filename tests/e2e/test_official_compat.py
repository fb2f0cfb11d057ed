"""Compatibility matrix: our client, the official 0.26.2 (v1beta2) and 1.22.0 (v1) clients.

Every public method the three share that needs no object storage or secret store, driven
against a real ``sandboxd up``. Each scenario is a small script printing JSON; it runs once
under each client (the official ones in their own virtualenvs and processes), and each must
report what a user expects. Where the protocols differ the scenario says so: v1 has no
profiles (``PROFILE`` is empty there), lists stopped sandboxes with ``show_terminated``, and
a deleted v1 sandbox stays readable, ended (v1.md §0.2).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import OUR_PYTHON, Platform, run_python
from tests.support.official import OFFICIAL_V1_VERSION, official_python

CLIENTS = ("official", "official_v1", "ours")
PRELUDE = """
import hashlib, json, time, uuid, cwsandbox
from cwsandbox import Sandbox, SandboxDefaults, Session
V1 = CLIENT == "official_v1"
PROFILE = {} if V1 else {"profile_names": ["locked-down"]}
DEFAULTS = {} if V1 else {"profile_names": ("locked-down",)}
STOPPED = {"show_terminated": True} if V1 else {"include_stopped": True}
out = {}
def error_name(call):
    try:
        call()
    except Exception as e:
        return type(e).__name__
    return None
"""

SCENARIOS = {
    "files": """
        sb = Sandbox.run(**PROFILE)
        sb.write_file("/tmp/small.txt", b"small file\\n").result()
        out["small"] = sb.read_file("/tmp/small.txt").result().decode()
        out["cat"] = sb.exec(["cat", "/tmp/small.txt"]).result().stdout
        sb.write_file("/tmp/empty", b"").result()
        out["empty"] = sb.read_file("/tmp/empty").result().decode()
        mid = bytes(range(256)) * (16 * 1024 * 1024 // 256)  # 16 MiB: unary, above gRPC's 4 MiB
        sb.write_file("/tmp/mid.bin", mid).result()
        out["mid_same"] = sb.read_file("/tmp/mid.bin").result() == mid
        big = bytes(range(256)) * (40 * 1024 * 1024 // 256)  # 40 MiB: above the unary cap
        sb.write_file("/tmp/big.bin", big).result()
        out["big_size"] = sb.exec(["stat", "-c", "%s", "/tmp/big.bin"]).result().stdout.strip()
        back = sb.read_file("/tmp/big.bin").result()
        out["big_same"] = hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest()
        out["missing"] = error_name(lambda: sb.read_file("/tmp/nope").result())
        out["directory"] = error_name(lambda: sb.read_file("/tmp").result())
        sb.stop().result()
    """,
    "sessions": """
        tag = uuid.uuid4().hex
        with Session(SandboxDefaults(tags=(tag,), **DEFAULTS)) as session:
            a = session.sandbox()
            b = session.sandbox()
            out["a"] = a.exec(["echo", "a"]).result().stdout
            out["b"] = b.exec(["echo", "b"]).result().stdout
            out["listed"] = len(session.list().result())
        time.sleep(0.5)
        out["after_close"] = len(Sandbox.list(tags=[tag]).result())
        out["statuses"] = sorted(
            str(s.status) for s in Sandbox.list(tags=[tag], **STOPPED).result()
        )
    """,
    "functions": """
        with Session(SandboxDefaults(**DEFAULTS)) as session:
            @session.function()
            def add(a, b):
                return a + b

            @session.function()
            def boom():
                raise ValueError("nope")

            out["remote"] = add.remote(2, 3).result()
            out["map"] = [ref.result() for ref in add.map([(1, 1), (2, 2)])]
            out["error"] = error_name(lambda: boom.remote().result())
    """,
    "mounted_files": """
        sb = Sandbox.run(
            **PROFILE,
            mounted_files=[{"mount_path": "/etc/app/config.txt", "file_content": b"configured"}],
        )
        out["read"] = sb.exec(["cat", "/etc/app/config.txt"]).result().stdout
        out["write"] = sb.exec(["sh", "-c", "echo x > /etc/app/config.txt"]).result().returncode
        sb.stop().result()
    """,
    "lifetime": """
        start = time.monotonic()
        sb = Sandbox.run("sleep", "300", **PROFILE, max_lifetime_seconds=2)
        sb.wait()
        error = error_name(lambda: sb.wait_until_complete(timeout=60).result())
        out["ended_within"] = time.monotonic() - start < 30
        out["status"] = str(Sandbox.from_id(sb.sandbox_id).result().status)
        out["error"] = error
    """,
    "main_exit": """
        sb = Sandbox.run("sh", "-c", "echo done; exit 7", **PROFILE)
        sb.wait_until_complete(timeout=60).result()
        out["status"] = str(sb.status)
        out["returncode"] = sb.returncode
    """,
    "delete_and_errors": """
        sb = Sandbox.run(**PROFILE)
        sb.wait()
        sid = sb.sandbox_id
        Sandbox.delete(sid).result()
        out["from_id"] = error_name(lambda: Sandbox.from_id(sid).result())
        out["delete_again"] = error_name(lambda: Sandbox.delete(sid).result())
        out["missing_ok"] = error_name(lambda: Sandbox.delete(sid, missing_ok=True).result())
        if PROFILE:  # v1 has no profiles
            out["bad_profile"] = error_name(lambda: Sandbox.run(profile_names=["ghost"]).wait())
        out["bad_image"] = error_name(
            lambda: Sandbox.run(container_image="nosuch:1", **PROFILE).wait()
        )
        other = Sandbox.run(**PROFILE)
        other.stop().result()
        out["exec_after_stop"] = error_name(lambda: other.exec(["true"]).result())
    """,
    "exec_details": """
        sb = Sandbox.run(**PROFILE, environment_variables={"GREETING": "hi"})
        out["env"] = sb.exec(["sh", "-c", "echo $GREETING"]).result().stdout
        out["cwd"] = sb.exec(["pwd"], cwd="/tmp").result().stdout
        out["signal"] = sb.exec(["sh", "-c", "kill -TERM $$"]).result().returncode
        out["missing_binary"] = sb.exec(["no-such-binary"]).result().returncode
        out["check"] = error_name(lambda: sb.exec(["false"], check=True).result())
        out["timeout"] = error_name(lambda: sb.exec(["sleep", "30"], timeout_seconds=1).result())
        sb.stop().result()
    """,
    "shell": """
        sb = Sandbox.run(**PROFILE)
        term = sb.shell(["/bin/sh"], width=100, height=30)
        term.stdin.write(b"stty size; tty; exit 4\\n").result()
        seen = b""
        for chunk in term.output:
            seen += chunk
        out["size"] = "30 100" in seen.decode(errors="replace")
        out["tty"] = "/dev/pts/" in seen.decode(errors="replace")
        out["code"] = term.wait()
        sb.stop().result()
    """,
    "logs": """
        sb = Sandbox.run(
            "sh", "-c", "echo first; echo second; echo oops >&2; sleep 300",
            **PROFILE,
        )
        sb.wait()
        time.sleep(1)
        out["lines"] = list(sb.stream_logs())
        out["tail"] = list(sb.stream_logs(tail_lines=1))
        sb.stop().result()
        out["after_stop"] = list(sb.stream_logs())
    """,
}

EXPECTED = {
    "files": {
        "small": "small file\n",
        "cat": "small file\n",
        "empty": "",
        "big_size": str(40 * 1024 * 1024),
        "big_same": True,
        "mid_same": True,
        "missing": "SandboxFileError",
        "directory": "SandboxFileError",
    },
    "sessions": {"a": "a\n", "b": "b\n", "listed": 2, "after_close": 0},
    "functions": {"remote": 5, "map": [2, 4]},
    "mounted_files": {"read": "configured"},
    "lifetime": {"ended_within": True},
    "main_exit": {"returncode": 7},
    "delete_and_errors": {
        "from_id": "SandboxNotFoundError",
        "delete_again": "SandboxNotFoundError",
        "missing_ok": None,
        "exec_after_stop": "SandboxNotRunningError",
    },
    "exec_details": {
        "env": "hi\n",
        "cwd": "/tmp\n",
        "signal": 143,
        "missing_binary": 127,
        "check": "SandboxExecutionError",
    },
    "logs": {},
    "shell": {"size": True, "tty": True, "code": 4},
}


# v1 semantics where they differ (v1.md §0.2): Delete stops, and the ended sandbox stays
# readable, so from_id finds it and a second delete is not an error.
EXPECTED_V1 = {
    "delete_and_errors": {
        "from_id": None,
        "delete_again": None,
        "missing_ok": None,
        "exec_after_stop": "SandboxNotRunningError",
    },
}


def run_scenario(
    python: Path | str, name: str, platform: Platform, workdir: Path, client: str
) -> dict[str, object]:
    # A file, not `python -c`: remote functions ship their source, found through inspect.
    script = workdir / f"{name}.py"
    body = textwrap.dedent(SCENARIOS[name])
    script.write_text(f"CLIENT = {client!r}\n" + PRELUDE + body + "\nprint(json.dumps(out))\n")
    return json.loads(run_python(python, script, platform.env()).splitlines()[-1])


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario(platform: Platform, client: str, name: str, tmp_path: Path) -> None:
    python = {
        "official": official_python,
        "official_v1": lambda: official_python(OFFICIAL_V1_VERSION),
        "ours": lambda: OUR_PYTHON,
    }[client]()
    result = run_scenario(python, name, platform, tmp_path, client)
    expected = EXPECTED_V1.get(name, EXPECTED[name]) if client == "official_v1" else EXPECTED[name]
    for key, value in expected.items():
        assert result[key] == value, (key, result)
    check_extra(name, result, client)


def check_extra(name: str, result: dict[str, object], client: str) -> None:
    if name == "sessions":
        statuses = result["statuses"]
        assert isinstance(statuses, list) and len(statuses) == 2
        assert all(str(s).lower().endswith(("completed", "terminated")) for s in statuses)
    elif name == "functions":
        assert result["error"] in ("FunctionError", "SandboxExecutionError")
    elif name == "mounted_files":
        assert result["write"] != 0  # read-only
    elif name == "lifetime":
        assert str(result["status"]).lower().endswith(("completed", "terminated"))
    elif name == "main_exit":
        assert str(result["status"]).lower().endswith("completed")
    elif name == "delete_and_errors":
        # Ours names what is missing (the profile); 0.26.2 calls it a missing sandbox.
        if client == "official_v1":  # no profiles; the v1 client reports its own class
            assert "bad_profile" not in result
            assert result["bad_image"] == "SandboxValidationError", result
            return
        expected = ("ProfileNotFoundError",) if client == "ours" else ("SandboxNotFoundError",)
        assert result["bad_profile"] in expected, result
        assert result["bad_image"] == "SandboxError"
    elif name == "exec_details":
        assert result["timeout"] in ("SandboxTimeoutError", "SandboxCommandTimeoutError")
    elif name == "logs":
        assert result["lines"][:2] == ["first\n", "second\n"]
        assert "oops\n" in result["lines"]
        assert result["tail"] == [result["lines"][-1]]
        assert result["after_stop"][:2] == ["first\n", "second\n"]
