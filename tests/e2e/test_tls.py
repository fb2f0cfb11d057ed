"""TLS end to end: control plane and ``sandboxd up`` with a private CA's certificate.

Runners, our client and CLIs trust the CA through a CA file; the official ``cwsandbox==0.26.2``
client calls ``grpc.ssl_channel_credentials()`` with no arguments, so it trusts what gRPC's
default roots are, which ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` replaces: that is how it is
pointed at a private CA, and what these tests do. Without the CA, or in plaintext, nothing
connects.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import OUR_PYTHON, run_python
from tests.support.ports import free_port
from tests.support.processes import (
    SANDBOXD,
    ControlPlaneProcess,
    Proc,
    RunnerProcess,
    child_env,
    printed,
)
from tests.support.tls import TlsFiles, make_tls_files

DISCOVERY = r"""
import json, cwsandbox
try:
    out = {"runners": [r.runner_id for r in cwsandbox.list_runners()]}
except cwsandbox.CWSandboxError as e:
    out = {"error": type(e).__name__}
print(json.dumps(out))
"""

SANDBOX = r"""
import cwsandbox
from cwsandbox import Sandbox
sb = Sandbox.run(profile_names=["locked-down"])
print(sb.exec(["echo", "over tls"]).result().stdout, end="")
sb.stop().result()
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_cp(
    tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles
) -> Iterator[ControlPlaneProcess]:
    root = tmp_path_factory.mktemp("tls-cp")
    cp = ControlPlaneProcess(
        data_dir=root / "cp", tls_cert=tls.cert, tls_key=tls.key, ca_file=tls.ca
    ).start()
    runner = RunnerProcess(cp, root / "r", runner_id="tls-runner", extra_args=["--backend", "none"])
    runner.start()
    try:
        with cp.discovery() as client:
            client.wait_for("tls-runner", healthy=True)  # the runner dialled https:// too
        yield cp
    finally:
        runner.stop()
        cp.stop()


def discovery(python: Path | str, cp: ControlPlaneProcess, **env: str) -> dict[str, object]:
    values = {"CWSANDBOX_BASE_URL": cp.url, "CWSANDBOX_API_KEY": cp.admin_key, **env}
    return dict(json.loads(run_python(python, DISCOVERY, child_env(**values))))


def test_both_clients_reach_a_tls_control_plane_through_its_ca(
    secure_cp: ControlPlaneProcess, tls: TlsFiles, official: Path
) -> None:
    assert secure_cp.url.startswith("https://")
    roots = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(tls.ca)}
    assert discovery(official, secure_cp, **roots) == {"runners": ["tls-runner"]}
    assert discovery(OUR_PYTHON, secure_cp, **roots) == {"runners": ["tls-runner"]}
    assert discovery(OUR_PYTHON, secure_cp, CWSANDBOX_CA_FILE=str(tls.ca)) == {
        "runners": ["tls-runner"]
    }
    # Without the CA the certificate is not trusted; plaintext finds no HTTP/2 server.
    assert discovery(official, secure_cp) == {"error": "DiscoveryError"}
    assert discovery(OUR_PYTHON, secure_cp) == {"error": "DiscoveryError"}
    plaintext = secure_cp.url.replace("https://", "http://")
    got = discovery(OUR_PYTHON, secure_cp, CWSANDBOX_BASE_URL=plaintext)
    assert got == {"error": "DiscoveryError"}


def test_clis_take_a_ca_file(secure_cp: ControlPlaneProcess, tls: TlsFiles) -> None:
    env = child_env(CWSANDBOX_BASE_URL=secure_cp.url, CWSANDBOX_API_KEY=secure_cp.admin_key)
    keys = subprocess.run(
        [*SANDBOXD, "keys", "create", "--org", "tls-team", "--ca-file", str(tls.ca)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert keys.returncode == 0, keys.stderr
    cli = str(Path(OUR_PYTHON).parent / "cwsandbox")
    member_env = {**env, "CWSANDBOX_API_KEY": keys.stdout.strip()}
    runners = subprocess.run(
        [cli, "--ca-file", str(tls.ca), "runners", "--json"],
        env=member_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert runners.returncode == 0, runners.stderr
    assert [r["runner_id"] for r in json.loads(runners.stdout)] == ["tls-runner"]
    untrusted = subprocess.run(
        [*SANDBOXD, "keys", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert untrusted.returncode == 1 and untrusted.stderr.startswith("error: ")


def test_sandboxd_up_serves_tls_and_runs_sandboxes(
    tmp_path: Path, tls: TlsFiles, official: Path
) -> None:
    port = free_port()
    proc = Proc(
        [*SANDBOXD, "up", "--data-dir", str(tmp_path / "up"), "--listen", f"127.0.0.1:{port}",
         "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)],
        child_env(),
    ).start()  # fmt: skip
    try:
        base_url = proc.wait_for_line("CWSANDBOX_BASE_URL=", timeout=600).split("=", 1)[1]
        assert base_url == f"https://127.0.0.1:{port}"
        ca_file = printed(proc, "CWSANDBOX_CA_FILE")
        assert Path(ca_file) == tls.ca.resolve()
        env = {
            "CWSANDBOX_BASE_URL": base_url,
            "CWSANDBOX_API_KEY": printed(proc, "CWSANDBOX_API_KEY"),
        }
        ours = child_env(**env, CWSANDBOX_CA_FILE=ca_file)
        theirs = child_env(**env, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=ca_file)
        assert run_python(OUR_PYTHON, SANDBOX, ours) == "over tls\n"
        assert run_python(official, SANDBOX, theirs) == "over tls\n"
    finally:
        assert proc.stop() == 0, proc.output
