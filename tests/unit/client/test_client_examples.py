"""The discovery examples run unchanged against the stand-in server.

``examples/*.py`` are verbatim copies of the discovery guide's code blocks; running them
here proves the public API they use exists and behaves. (Against the real control plane,
see ``tests/e2e``.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.client.client_standin import StandIn

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
GUIDE = Path("/work/shared/seed/000_4596ebc51dc86116.txt")

EXPECTED = {
    "list_profiles.py": ["default  runner=r1", "  ingress: public", "  egress:  internet"],
    "filter_profiles_by_networking.py": ["default  runner=r1"],
    "get_profile.py": ["default  runner=r1"],
    "list_runners.py": [
        "Runner(runner_id='r1', healthy=True, cpu=8.0 vCPU, memory=16.0 GiB, gpus=0, "
        "profiles=['default', 'gpu'])"
    ],
    "runner_resources.py": [
        "r1  healthy=True",
        "  max: 8.0 vCPU, 16.0 GiB",
        "  available: 6.0 vCPU, 8.0 GiB",
        "  running sandboxes: 2",
    ],
    "filter_runners_by_capacity.py": ["r1", "  cpu: 6.0 vCPU", "  memory: 8.0 GiB", "r3"],
    "get_runner.py": ["Runner not found: runner-abc-123"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(standin: StandIn, name: str) -> None:
    env = {**os.environ, "CWSANDBOX_BASE_URL": standin.url}
    env.pop("CWSANDBOX_API_KEY", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in EXPECTED[name]:
        assert expected in lines
    if name == "filter_runners_by_capacity.py":
        assert "r2" not in lines  # too little free capacity
        assert "r4" not in lines  # reports no resources at all


@pytest.mark.skipif(not GUIDE.exists(), reason="discovery guide not available here")
def test_examples_are_verbatim_guide_blocks() -> None:
    blocks = re.findall(r'```python theme=\{"system"\}\n(.*?)```', GUIDE.read_text(), re.S)
    discovery_blocks = [b for b in blocks if "Sandbox" not in b.replace("cwsandbox", "")]
    files = [p.read_text() for p in sorted(EXAMPLES.glob("*.py")) if p.name in EXPECTED]
    assert sorted(files) == sorted(discovery_blocks)
