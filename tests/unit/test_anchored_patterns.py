"""Names and ids from callers are matched to their very end: a trailing newline is refused.

Python's ``$`` also matches just before a final ``\\n``, so ``"r1\\n"`` passed patterns
written ``^...$``: a runner could register as ``r1\\n`` next to ``r1`` (one host, two
identities in logs and listings), an organization or an image name could carry a line
break into logs and paths. Every such pattern now ends in ``\\Z``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.backends.base import SandboxSpec
from sandboxd.backends.errors import InvalidSpec
from sandboxd.identity import keyformat
from sandboxd.identity.model import RUNNER_ID_PATTERN, organization_problem
from sandboxd.images.store import ImageError, ImageStore, parse_name


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
def test_trailing_whitespace_is_refused_everywhere(suffix: str) -> None:
    assert RUNNER_ID_PATTERN.match("runner-1")
    assert not RUNNER_ID_PATTERN.match("runner-1" + suffix)
    assert organization_problem("acme") is None
    assert organization_problem("acme" + suffix) is not None
    secret = keyformat.mint(keyformat.SecretKind.API_KEY)
    assert keyformat.parse(secret.text) is not None
    # Secrets are read from files: surrounding blanks are stripped on purpose, the same key
    # results; but nothing may follow the secret on a further line.
    assert keyformat.parse(secret.text + suffix) == keyformat.parse(secret.text)
    assert keyformat.parse(secret.text + "\nextra") is None
    assert parse_name("python:3.11") == ("python", "3.11")
    for ref in ("python" + suffix, "python:3.11" + suffix):
        with pytest.raises(ImageError):
            parse_name(ref)
    with pytest.raises(InvalidSpec, match="sandbox_id"):
        SandboxSpec("sb-1" + suffix, image="busybox")


@pytest.mark.parametrize("ref", ["../../etc", "/etc:latest", "a/../../b:1", "python:../x", ".."])
def test_an_image_reference_cannot_name_a_host_path(ref: str, tmp_path: Path) -> None:
    """Specs name images by reference; the store resolves them only inside its own tree."""
    store = ImageStore(tmp_path)
    with pytest.raises(ImageError):
        store.resolve(ref)
