"""A real multi-runner cluster shared by the discovery integration tests.

Three real ``sandboxd runner`` processes join one real ``sandboxd controlplane`` with a
configuration of several profiles and bindings. The GPU runner finds its GPUs through an
``nvidia-smi`` stand-in script placed first on its PATH (this machine has no GPU); everything
else — fingerprinting, registration, heartbeats, discovery — is the real code path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ControlPlaneProcess, RunnerProcess

CLUSTER_CONFIG = """
profiles:
  - display_name: default
    spec:
      network:
        egress:
          default: internet
          modes: {internet: {type: internet}, none: {type: none}}
        ingress:
          default: internal
          modes: {public: {type: public}, internal: {type: internal}}
  - display_name: locked-down
    spec:
      network:
        egress: {default: none, modes: {none: {type: none}}}
  - display_name: gpu
    spec:
      gpu_types: [H100, A100]
      architectures: [amd64, arm64]
      network:
        egress:
          default: github
          modes: {github: {type: allowlist, cidrs: [140.82.112.0/20]}}
runners:
  - runner_id: alpha
    bindings:
      - {profile: default, is_default: true}
      - {profile: locked-down}
  - runner_id: bravo
    runner_group_id: gpu-pool
    bindings:
      - {profile: gpu, is_default: true}
      - profile: default
        profile_name: default-large
        overrides: {resource_ceilings: {cpu: "8"}}
  - runner_id: charlie
    shared: true
    bindings:
      - {profile: locked-down, is_default: true}
"""

FAKE_NVIDIA_SMI = """#!/bin/sh
# Stand-in for nvidia-smi on a machine without GPUs: prints what the real tool prints for
# two H100 GPUs with --query-gpu=name --format=csv,noheader.
echo "NVIDIA H100 80GB HBM3"
echo "NVIDIA H100 80GB HBM3"
"""


@dataclass
class Cluster:
    control_plane: ControlPlaneProcess
    runners: dict[str, RunnerProcess]


def fake_gpu_path(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{directory}:{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    config = root / "platform.yaml"
    config.write_text(CLUSTER_CONFIG)
    control_plane = ControlPlaneProcess(data_dir=root / "cp", config=config).start()
    runners = {
        "alpha": RunnerProcess(control_plane, root / "alpha", "alpha", group="east", tags=["ssd"]),
        "bravo": RunnerProcess(
            control_plane,
            root / "bravo",
            "bravo",
            group="west",
            tags=["gpu", "ssd"],
            extra_env={"PATH": fake_gpu_path(root / "fake-gpu-bin")},
        ),
        "charlie": RunnerProcess(control_plane, root / "charlie", "charlie", group="east"),
        # Not in the configuration: gets no bindings (the file has no default_bindings).
        "delta": RunnerProcess(control_plane, root / "delta", "delta", group="west"),
    }
    for runner in runners.values():
        runner.start()
    try:
        with control_plane.discovery() as client:
            for runner_id in runners:
                client.wait_for(runner_id, healthy=True)
        yield Cluster(control_plane, runners)
    finally:
        for runner in runners.values():
            runner.stop()
        control_plane.stop()
