"""``sandboxd images``: build, import and list images (mounted by the main CLI).

Why a separate click group: the ``sandboxd`` command mounts it as ``sandboxd images``, and it
is usable on its own in tests. The data directory comes from ``--data-dir`` or
``$SANDBOXD_DATA_DIR`` (default: :func:`sandboxd.paths.default_data_dir`, the same directory
``sandboxd up`` uses).
"""

from __future__ import annotations

import time

import click

from sandboxd.paths import default_data_dir

from .build import RECIPES, build_image
from .importer import import_image
from .store import ImageError, ImageStore


def _store(ctx: click.Context) -> ImageStore:
    store: ImageStore = ctx.obj["store"]
    return store


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f}{unit}"
        value /= 1024
    return f"{value:.0f}TiB"


@click.group("images")
@click.option(
    "--data-dir",
    envvar="SANDBOXD_DATA_DIR",
    default=lambda: str(default_data_dir()),
    show_default="user data directory",
    type=click.Path(file_okay=False),
    help="sandboxd data directory holding the image store",
)
@click.pass_context
def images_group(ctx: click.Context, data_dir: str) -> None:
    """Build, import and list sandbox images."""
    ctx.ensure_object(dict)
    ctx.obj["store"] = ImageStore(data_dir)


def _progress(line: str) -> None:
    click.echo(f"  {line}", err=True)


@images_group.command("build")
@click.argument("ref", metavar="NAME[:TAG]")
@click.option("--force", is_flag=True, help="rebuild even if the cache has this recipe")
@click.pass_context
def build_cmd(ctx: click.Context, ref: str, force: bool) -> None:
    """Build an image from Debian packages (e.g. python:3.11)."""
    started = time.monotonic()
    click.echo(f"building {ref} (cache: {_store(ctx).cache})", err=True)
    try:
        info = build_image(_store(ctx), ref, progress=_progress, force=force)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{info.ref} ready in {time.monotonic() - started:.1f}s: {info.rootfs}")


@images_group.command("import")
@click.argument("ref", metavar="NAME[:TAG]")
@click.argument("path", type=click.Path(exists=True))
@click.pass_context
def import_cmd(ctx: click.Context, ref: str, path: str) -> None:
    """Import a rootfs directory, rootfs tarball or OCI archive as NAME[:TAG]."""
    try:
        info = import_image(_store(ctx), ref, path, progress=_progress)
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{info.ref} imported: {info.rootfs}")


@images_group.command("ls")
@click.pass_context
def ls_cmd(ctx: click.Context) -> None:
    """List images in the store (and which names can be built)."""
    images = _store(ctx).list_images()
    if not images:
        click.echo("no images; buildable: " + ", ".join(sorted(RECIPES)))
        return
    width = max(len(i.ref) for i in images)
    click.echo(f"{'IMAGE':<{width}}  {'SOURCE':<24}  CREATED")
    for info in images:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created_at))
        click.echo(f"{info.ref:<{width}}  {info.source[:24]:<24}  {created}")


__all__ = ["images_group"]
