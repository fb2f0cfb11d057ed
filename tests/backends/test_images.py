"""The image store: names, resolve errors that name the fix, import, build cache, CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandboxd.images import (
    ImageError,
    ImageNotFound,
    ImageStore,
    build_busybox_image,
    import_image,
    parse_name,
)
from sandboxd.images.cli import images_group


def test_parse_name() -> None:
    assert parse_name("python:3.11") == ("python", "3.11")
    assert parse_name("busybox") == ("busybox", "latest")
    assert parse_name("org/tool:v1.2") == ("org/tool", "v1.2")
    for bad in ("Python:3", "../x", "a:b:c/d", ""):
        with pytest.raises(ImageError):
            parse_name(bad)


def test_resolve_unknown_names_the_command(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    with pytest.raises(ImageNotFound) as err:
        store.resolve("python:3.11")
    assert "sandboxd images build python:3.11" in str(err.value)
    with pytest.raises(ImageNotFound) as err:
        store.resolve("myorg/app:1")
    assert "sandboxd images import myorg/app:1 PATH" in str(err.value)


def _tiny_rootfs(path: Path) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (path / "bin" / "hello").chmod(0o755)
    (path / "etc").mkdir()
    (path / "etc" / "os-release").write_text("ID=tiny\n")
    return path


def test_import_directory_and_tarball(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data")
    src = _tiny_rootfs(tmp_path / "src")
    info = import_image(store, "tiny:dir", src, progress=lambda _l: None)
    assert (info.rootfs / "etc" / "os-release").read_text() == "ID=tiny\n"
    assert os.access(info.rootfs / "bin" / "hello", os.X_OK)
    tar_path = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src, arcname=".")
    info = import_image(store, "tiny:tar", tar_path, progress=lambda _l: None)
    assert store.resolve("tiny:tar") == info.rootfs
    assert (info.rootfs / "bin" / "hello").read_text().startswith("#!/bin/sh")
    assert [i.ref for i in store.list_images()] == ["tiny:dir", "tiny:tar"]
    assert json.loads((tmp_path / "data/images/tiny/tar/image.json").read_text())["source"]
    store.remove("tiny:dir")
    assert [i.ref for i in store.list_images()] == ["tiny:tar"]
    assert src.exists()  # importing never consumes the source


def test_oci_archive_needs_skopeo_and_umoci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a host without the tools (a PATH that has neither), the import says what to install."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert shutil.which("skopeo") is None and shutil.which("umoci") is None
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", b"{}"),
        ):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    with pytest.raises(ImageError, match="skopeo and umoci"):
        import_image(ImageStore(tmp_path / "data"), "oci:1", archive, progress=lambda _l: None)
    assert not (tmp_path / "data" / "images" / "oci").exists()


def test_builds_are_cached(image_store: ImageStore, busybox_rootfs: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    other = ImageStore(tmp_path / "other", cache=image_store.cache)
    info = build_busybox_image(other, progress=lines.append)
    assert info.rootfs == busybox_rootfs
    assert any("using cached build" in line for line in lines)


def test_cli_ls_import_build(tmp_path: Path, busybox_rootfs: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    res = runner.invoke(images_group, [*data, "ls"])
    assert res.exit_code == 0 and "python:3.11" in res.output
    src = _tiny_rootfs(tmp_path / "src")
    res = runner.invoke(images_group, [*data, "import", "tiny:1", str(src)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(images_group, [*data, "build", "busybox"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(images_group, [*data, "ls"])
    assert "tiny:1" in res.output and "busybox:latest" in res.output
    res = runner.invoke(images_group, [*data, "build", "python:3.12"])
    assert res.exit_code != 0 and "buildable images" in res.output
