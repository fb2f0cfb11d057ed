"""Discover NVIDIA GPUs with ``nvidia-smi`` and turn marketing names into short model names.

Why short names: profiles and sandbox requests name GPU types the way the platform does
("H100", "A100"), not the way the driver prints them ("NVIDIA H100 80GB HBM3"). The runner
reports the short form so the scheduler can compare strings without knowing driver quirks.

Naming rule (applied by :func:`short_gpu_name`):

1. Drop vendor and brand words: ``NVIDIA``, ``GeForce``, ``Tesla``, ``Quadro``.
2. If the next word is a family word (``RTX``, ``GTX``, ``TITAN``), glue it to the following
   words up to and including the first one that contains a digit (at most three words):
   "GeForce RTX 4090" → ``RTX4090``, "RTX A6000" → ``RTXA6000``, "RTX PRO 6000 Blackwell" →
   ``RTXPRO6000``, "TITAN V" → ``TITANV``.
3. Otherwise take the first word, cut at the first ``-``: "A100-SXM4-40GB" → ``A100``,
   "H100 80GB HBM3" → ``H100``, "L40S" → ``L40S``.
4. Upper-case the result.

A missing binary, a failure or a timeout all mean "no GPUs": a runner without working drivers
must not advertise GPUs it cannot hand to a sandbox.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass

_log = logging.getLogger(__name__)

_BRAND_WORDS = frozenset({"NVIDIA", "GEFORCE", "TESLA", "QUADRO"})
_FAMILY_WORDS = frozenset({"RTX", "GTX", "TITAN"})
_MAX_FAMILY_WORDS = 3
NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GpuInventory:
    """GPUs on the host: how many, and their distinct short model names in first-seen order."""

    count: int
    types: tuple[str, ...]


def short_gpu_name(name: str) -> str:
    """Shorten an ``nvidia-smi`` product name to a model name, following the module's rule."""
    words = [word for word in name.split() if word.upper() not in _BRAND_WORDS]
    if not words:
        return name.strip().upper()
    if words[0].upper() in _FAMILY_WORDS:
        picked: list[str] = []
        for word in words[:_MAX_FAMILY_WORDS]:
            picked.append(word)
            if len(picked) > 1 and any(char.isdigit() for char in word):
                break
        return "".join(picked).upper()
    return words[0].split("-", 1)[0].upper()


def parse_gpu_names(output: str) -> GpuInventory:
    """Turn ``--query-gpu=name --format=csv,noheader`` output (one GPU a line) into an inventory."""
    names = [line.strip() for line in output.splitlines() if line.strip()]
    types: list[str] = []
    for name in names:
        short = short_gpu_name(name)
        if short not in types:
            types.append(short)
    return GpuInventory(count=len(names), types=tuple(types))


def discover_gpus(nvidia_smi: str = "nvidia-smi") -> GpuInventory:
    """Run ``nvidia-smi`` (looked up on ``PATH`` unless a path is given) and parse its answer."""
    binary = shutil.which(nvidia_smi)
    if binary is None:
        return GpuInventory(count=0, types=())
    try:
        completed = subprocess.run(
            [binary, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("nvidia-smi failed (%s); reporting no GPUs", exc)
        return GpuInventory(count=0, types=())
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        _log.warning(
            "nvidia-smi exited %d (%s); reporting no GPUs",
            completed.returncode,
            detail[0] if detail else "no output",
        )
        return GpuInventory(count=0, types=())
    return parse_gpu_names(completed.stdout)
