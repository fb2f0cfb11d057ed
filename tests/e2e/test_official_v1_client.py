"""The official v1 clients (``coreweave.sandbox.v1``) against a real ``sandboxd up``.

Each scenario is a small script printing JSON, run by the official client in its own
virtualenv and process (the v1 descriptors must not meet the server's in one process,
protocol/v1.md §16). 1.22.0 runs every scenario; 1.14.4 and 0.27.0, whose wire is the same
but whose behaviour differs where §14 says (no ConnectSandbox before 1.9, no PREPARING
before 1.14, a missing ``exit`` read as 0 before 1.19.6, 5 s more exec deadline before
1.19.3), run the core ones.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import Platform, run_python
from tests.support.official import OFFICIAL_V1_VERSION, OFFICIAL_V1_VERSIONS, official_python

pytestmark = pytest.mark.official

PRELUDE = """
import json, time, uuid, urllib.request, cwsandbox
from cwsandbox import Sandbox, SandboxDefaults, Session
out = {}
def error_of(call):
    try:
        call()
    except Exception as e:
        return [type(e).__name__, getattr(e, "reason", None)]
    return None
def eventually(check, seconds=30):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
"""

CORE = {
    "lifecycle": """
        tag = uuid.uuid4().hex
        sb = Sandbox.run(tags=[tag], environment_variables={"GREETING": "hello v1"},
                         resources={"cpu": "500m", "memory": "256Mi"})
        sb.wait()
        out["status"] = str(sb.status)
        r = sb.exec(["sh", "-c", "echo out; echo err >&2; echo $GREETING; exit 3"]).result()
        out["exec"] = [r.stdout, r.stderr, r.returncode]
        out["check"] = error_of(lambda: sb.exec(["false"], check=True).result())
        p = sb.exec(["cat"], stdin=True)
        p.stdin.write(b"hello from stdin\\n").result()
        p.stdin.close().result()
        out["stdin"] = p.result().stdout
        out["listed"] = [s.sandbox_id for s in Sandbox.list(tags=[tag]).result()] == [sb.sandbox_id]
        again = Sandbox.from_id(sb.sandbox_id).result()
        out["again"] = again.exec(["echo", "adopted"]).result().stdout
        sb.stop().result()
        out["stopped"] = str(sb.status)
        out["returncode"] = sb.returncode
        out["after_stop"] = error_of(lambda: sb.exec(["true"]).result())
        out["still_readable"] = str(Sandbox.from_id(sb.sandbox_id).result().status)
        out["listed_after_stop"] = len(Sandbox.list(tags=[tag]).result())
        out["missing"] = error_of(lambda: Sandbox.from_id("sb-0123456789a00000000").result())
    """,
    "exit_and_auth": """
        sb = Sandbox.run("sh", "-c", "echo bye; exit 3")
        sb.wait_until_complete(timeout=60).result()
        out["ended"] = [str(sb.status), sb.returncode]
        out["stamped"] = [line.split(" ", 1) for line in sb.stream_logs(timestamps=True)]
        import os
        os.environ["CWSANDBOX_API_KEY"] = "sbxk_0000000000000000_not-a-real-key"
        out["bad_key_runners"] = error_of(lambda: cwsandbox.list_runners())
        out["bad_key_run"] = error_of(lambda: Sandbox.run().wait())
        out["bad_key_get"] = error_of(lambda: Sandbox.from_id(sb.sandbox_id).result())
    """,
    "files": """
        sb = Sandbox.run()
        sb.write_file("/tmp/small.txt", b"small file\\n").result()
        out["small"] = sb.read_file("/tmp/small.txt").result().decode()
        out["cat"] = sb.exec(["cat", "/tmp/small.txt"]).result().stdout
        sb.write_file("/tmp/empty", b"").result()
        out["empty"] = sb.read_file("/tmp/empty").result().decode()
        mid = bytes(range(256)) * (16 * 1024 * 1024 // 256)
        sb.write_file("/tmp/mid.bin", mid).result()
        out["mid_same"] = sb.read_file("/tmp/mid.bin").result() == mid
        out["missing"] = error_of(lambda: sb.read_file("/tmp/nope").result())
        out["directory"] = error_of(lambda: sb.read_file("/tmp").result())
        sb.stop().result()
    """,
    "logs": """
        sb = Sandbox.run("sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; sleep 600")
        sb.wait()
        followed = []
        for line in sb.stream_logs(follow=True):
            followed.append(line.strip())
            if len(followed) == 3:
                break
        out["follow"] = followed
        out["all"] = [line.strip() for line in sb.stream_logs()]
        out["tail"] = [line.strip() for line in sb.stream_logs(tail_lines=1)]
        sb.stop().result()
    """,
    "delete": """
        sb = Sandbox.run()
        sb.wait()
        Sandbox.delete(sb.sandbox_id).result()
        ended = ("completed", "terminated", "failed")
        eventually(lambda: str(Sandbox.from_id(sb.sandbox_id).result().status) in ended)
        out["after_delete"] = str(Sandbox.from_id(sb.sandbox_id).result().status)
        out["again_ok"] = error_of(lambda: Sandbox.delete(sb.sandbox_id).result())
        out["missing"] = error_of(lambda: Sandbox.delete("sb-0123456789a00000000").result())
        out["missing_ok"] = error_of(
            lambda: Sandbox.delete("sb-0123456789a00000000", missing_ok=True).result())
    """,
    "sessions": """
        tag = uuid.uuid4().hex
        with Session(SandboxDefaults(tags=(tag,))) as session:
            a = session.sandbox()
            b = session.sandbox()
            out["a"] = a.exec(["echo", "a"]).result().stdout
            out["b"] = b.exec(["echo", "b"]).result().stdout
            out["listed"] = len(session.list().result())
        eventually(lambda: not Sandbox.list(tags=[tag]).result())
        out["after_close"] = len(Sandbox.list(tags=[tag]).result())
    """,
}

LATEST_ONLY = {
    "discovery": """
        runners = cwsandbox.list_runners(include_resources=True)
        r = runners[0]
        out["runner"] = [r.runner_id, bool(r.organization_id), r.healthy, r.resources is not None]
        out["visibilities"] = sorted(r.supported_service_visibilities)
        got = cwsandbox.get_runner(r.runner_id, organization_id=r.organization_id)
        out["get"] = [got.runner_id, got.resources is not None]
        out["other_org"] = error_of(
            lambda: cwsandbox.get_runner(r.runner_id, organization_id="someone-else"))
        out["healthy_only"] = [x.runner_id for x in cwsandbox.list_runners(healthy_only=True)]
        out["public"] = [x.runner_id for x in cwsandbox.list_runners(service_visibility="public")]
        out["custom"] = [x.runner_id for x in cwsandbox.list_runners(service_visibility="custom")]
        out["no_gpu_type"] = len(cwsandbox.list_runners(gpu_type="no-such-gpu"))
    """,
    "exec_timeout": """
        sb = Sandbox.run()
        out["timeout"] = error_of(
            lambda: sb.exec(["sh", "-c", "sleep 77; echo late"], timeout_seconds=1).result())
        def sleeper_gone():
            ps = sb.exec(["ps", "-eo", "args"]).result().stdout
            return "sleep 77" not in ps
        eventually(sleeper_gone, 20)
        out["killed"] = True
        out["after"] = sb.exec(["echo", "still usable"]).result().stdout
        sb.stop().result()
    """,
    "resources": """
        sb = Sandbox.run(resources={"cpu": "500m", "memory": "256Mi"})
        sb.wait()
        out["limits"] = sb.resource_limits
        small = sb.exec(["python3", "-c", "x = bytearray(64 << 20)"]).result()
        touch = "x = bytearray(600 << 20); x[::4096] = b'1' * len(x[::4096])"
        big = sb.exec(["python3", "-c", touch]).result()
        out["small_rc"] = small.returncode
        out["big_rc"] = big.returncode
        sb.stop().result()
    """,
    "services": """
        sb = Sandbox.run("python3", "-m", "http.server", "8080", "--directory", "/etc",
                         services=[cwsandbox.Service(port=8080, name="web")])
        sb.wait()
        out["exposed"] = [list(p) for p in sb.exposed_ports]
        url = sb.service_urls[0][2].replace("tcp://", "http://") + "/hostname"
        def served():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        eventually(served, 30)
        out["served"] = True
        sb.stop().result()
    """,
    "not_offered": """
        two = [cwsandbox.Container(name="a", image="python:3.11", command="sleep", primary=True,
                                   args=["1"], resources={"cpu": "100m", "memory": "64Mi"}),
               cwsandbox.Container(name="b", image="python:3.11", command="sleep",
                                   args=["1"], resources={"cpu": "100m", "memory": "64Mi"})]
        out["two_containers"] = error_of(lambda: Sandbox.run(containers=two).wait())
        two_scratch = [cwsandbox.ScratchVolumeOptions(name="a", mount_path="/a"),
                       cwsandbox.ScratchVolumeOptions(name="b", mount_path="/b")]
        out["two_scratch"] = error_of(lambda: Sandbox.run(volumes=two_scratch).wait())
        out["get_snapshot"] = error_of(lambda: Sandbox.get_snapshot("fss-1").result())
        out["bucket"] = error_of(lambda: Sandbox.get_snapshot_bucket_config().result())
    """,
}


def run_scenario(python: Path, body: str, platform: Platform) -> dict[str, object]:
    script = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out, default=str))\n"
    return json.loads(run_python(python, script, platform.env()).strip().splitlines()[-1])


@pytest.fixture(scope="session")
def latest() -> Path:
    return official_python(OFFICIAL_V1_VERSION)


def check_core(name: str, result: dict[str, object]) -> None:
    """What a user of any v1 client sees in the core scenarios."""
    if name == "lifecycle":
        assert result["status"] == "running"
        assert result["exec"] == ["out\nhello v1\n", "err\n", 3]
        assert result["check"][0] == "SandboxExecutionError"  # type: ignore[index]
        assert result["stdin"] == "hello from stdin\n"
        assert result["listed"] is True
        assert result["again"] == "adopted\n"
        assert result["stopped"] in ("completed", "terminated")
        assert result["returncode"] in (0, None)
        assert result["after_stop"][0] == "SandboxNotRunningError"  # type: ignore[index]
        assert result["still_readable"] in ("completed", "terminated")
        assert result["listed_after_stop"] == 0
        assert result["missing"] == ["SandboxNotFoundError", "CWSANDBOX_SANDBOX_NOT_FOUND"]
    elif name == "exit_and_auth":
        assert result["ended"] == ["completed", 3]
        [[stamp, line]] = result["stamped"]  # type: ignore[misc]
        assert line == "bye\n" and stamp.endswith("Z") and stamp[:2] == "20"
        for call in ("bad_key_runners", "bad_key_run", "bad_key_get"):
            assert result[call][0] == "CWSandboxAuthenticationError", call  # type: ignore[index]
    elif name == "files":
        assert result["small"] == result["cat"] == "small file\n"
        assert result["empty"] == ""
        assert result["mid_same"] is True
        assert result["missing"] == ["SandboxFileError", "CWSANDBOX_FILE_NOT_FOUND"]
        assert result["directory"] == ["SandboxFileError", "CWSANDBOX_FILE_IS_DIRECTORY"]
    elif name == "logs":
        assert result["follow"] == ["line1", "line2", "line3"]
        assert result["all"] == ["line1", "line2", "line3"]
        assert result["tail"] == ["line3"]
    elif name == "delete":
        assert result["after_delete"] in ("completed", "terminated")
        assert result["again_ok"] is None
        assert result["missing"] == ["SandboxNotFoundError", "CWSANDBOX_SANDBOX_NOT_FOUND"]
        assert result["missing_ok"] is None
    elif name == "sessions":
        assert [result["a"], result["b"], result["listed"]] == ["a\n", "b\n", 2]
        assert result["after_close"] == 0


@pytest.mark.parametrize("name", sorted(CORE))
def test_latest_client_core(name: str, platform: Platform, latest: Path) -> None:
    check_core(name, run_scenario(latest, CORE[name], platform))


@pytest.mark.parametrize("version", [v for v in OFFICIAL_V1_VERSIONS if v != OFFICIAL_V1_VERSION])
@pytest.mark.parametrize("name", sorted(CORE))
def test_older_v1_clients_core(name: str, version: str, platform: Platform) -> None:
    check_core(name, run_scenario(official_python(version), CORE[name], platform))


def test_discovery(platform: Platform, latest: Path) -> None:
    result = run_scenario(latest, LATEST_ONLY["discovery"], platform)
    assert result["runner"] == [platform.runner_id, True, True, True]
    assert result["visibilities"] == ["private", "public"]
    assert result["get"] == [platform.runner_id, True]
    assert result["other_org"] == ["RunnerNotFoundError", "CWSANDBOX_RUNNER_NOT_FOUND"]
    assert result["healthy_only"] == [platform.runner_id]
    assert result["public"] == [platform.runner_id]
    assert result["custom"] == []
    assert result["no_gpu_type"] == 0


def test_exec_timeout_kills_the_command(platform: Platform, latest: Path) -> None:
    result = run_scenario(latest, LATEST_ONLY["exec_timeout"], platform)
    assert result["timeout"][0] == "SandboxTimeoutError"  # type: ignore[index]
    assert result["killed"] is True
    assert result["after"] == "still usable\n"


def test_resources_are_enforced(platform: Platform, latest: Path) -> None:
    result = run_scenario(latest, LATEST_ONLY["resources"], platform)
    assert result["limits"] == {"cpu": "500m", "memory": str(256 * 1024 * 1024)}
    assert result["small_rc"] == 0
    assert result["big_rc"] != 0  # 600 MiB touched in a 256 MiB sandbox: killed


def test_services_are_published(platform: Platform, latest: Path) -> None:
    result = run_scenario(latest, LATEST_ONLY["services"], platform)
    assert result["exposed"] == [[8080, "web"]]
    assert result["served"] is True


def test_what_is_not_offered_says_so(platform: Platform, latest: Path) -> None:
    result = run_scenario(latest, LATEST_ONLY["not_offered"], platform)
    assert result["two_containers"] == ["SandboxValidationError", "CWSANDBOX_INVALID_ARGUMENT"]
    assert result["two_scratch"] == ["SandboxValidationError", "CWSANDBOX_INVALID_ARGUMENT"]
    # Snapshots are offered (test_v1_snapshots.py): a missing one is just missing.
    assert result["get_snapshot"] == ["SnapshotNotFoundError", "CWSANDBOX_FSS_NOT_FOUND"]
    assert result["bucket"] is None


def test_v1_execs_and_files_are_in_the_activity_trail(
    platform: Platform, latest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trail records what a v1 client did exactly as it records a v1beta2 client."""
    result = run_scenario(
        latest,
        """
        sb = Sandbox.run()
        sb.wait()
        sb.exec(["sh", "-c", "exit 5"]).result()
        sb.write_file("/tmp/v1.txt", b"from v1\\n").result()
        out["id"] = sb.sandbox_id
        sb.stop().result()
        """,
        platform,
    )
    from cwsandbox._events import iter_events

    monkeypatch.setenv("CWSANDBOX_BASE_URL", platform.base_url)
    monkeypatch.setenv("CWSANDBOX_API_KEY", platform.api_key)
    events = list(iter_events(str(result["id"])))
    execs = [e.data for e in events if e.kind == "exec"]
    assert [(d["argv"], d["exit_code"]) for d in execs] == [(["sh", "-c", "exit 5"], 5)]
    written = [e.data for e in events if e.kind == "file_written"]
    assert [(d["path"], d["size"]) for d in written] == [("/tmp/v1.txt", 8)]
    assert {"placed", "running", "delete_requested"} <= {e.kind for e in events}
