"""``--insecure-no-auth``: the one way to an open API, said loudly; runners still need tokens."""

from __future__ import annotations

from pathlib import Path

from sandboxd_protocol.sandboxd_v1 import admin_pb2
from tests.support.processes import ControlPlaneProcess, RunnerProcess, admin_call


def test_insecure_mode_opens_the_api_with_a_warning_but_not_the_runner_port(
    tmp_path: Path,
) -> None:
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp", extra_args=["--insecure-no-auth"]).start()
    try:
        assert cp.proc is not None
        assert "WARNING: --insecure-no-auth" in cp.proc.output
        with cp.discovery(api_key="") as client:  # no key at all
            assert client.list_runners().runners == []
        listed = admin_call(
            cp.target, "", "ListApiKeys", admin_pb2.ListApiKeysRequest(),
            admin_pb2.ListApiKeysResponse,
        )  # fmt: skip
        assert [k.organization for k in listed.keys] == ["admin"]
        # Runners are not opened up: a made-up token is refused, a real one works.
        intruder = RunnerProcess(
            cp, tmp_path / "x", runner_id="x", join_token="sbxj_0123456789abcdef_" + "A" * 43,
            extra_args=["--backend", "none"],
        ).start()  # fmt: skip
        assert intruder.proc is not None
        assert intruder.proc.popen.wait(timeout=20) == 3
        assert "join token not recognised" in intruder.proc.output
        runner = RunnerProcess(
            cp, tmp_path / "ok", runner_id="ok", extra_args=["--backend", "none"]
        ).start()
        try:
            with cp.discovery(api_key="") as client:
                client.wait_for("ok", healthy=True)
        finally:
            runner.stop()
    finally:
        cp.stop()


def test_without_the_flag_nothing_is_open(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(data_dir=tmp_path / "cp").start()
    try:
        assert cp.proc is not None
        assert "insecure" not in cp.proc.output.lower()
        assert "administrator key in" in cp.proc.output
        assert cp.admin_key not in cp.proc.output  # the controlplane never prints the key
    finally:
        cp.stop()
