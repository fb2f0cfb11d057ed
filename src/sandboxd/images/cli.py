"""``sandboxd images``: build, import, pull, list and remove images (mounted by the main CLI).

Why a separate click group: the ``sandboxd`` command mounts it as ``sandboxd images``, and it
is usable on its own in tests. The data directory comes from ``--data-dir`` or
``$SANDBOXD_DATA_DIR`` (default: :func:`sandboxd.paths.default_data_dir`, the same directory
``sandboxd up`` uses).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console

from sandboxd.backends.local.state import sandboxes_using
from sandboxd.config import ConfigError, load_config
from sandboxd.paths import default_data_dir

from .build import RECIPES, build_image
from .importer import import_image
from .puller import pull_image
from .store import ImageError, ImageStore, parse_name


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
        with _live_progress(f"building {ref}") as progress:
            info = build_image(_store(ctx), ref, progress=progress, force=force)
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


@contextlib.contextmanager
def _live_progress(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step on a terminal; one line per step otherwise (logs)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _progress
        return
    with console.status(title) as status:
        yield lambda line: status.update(f"{title}: {line}")


@images_group.command("pull")
@click.argument("ref", metavar="[REGISTRY[:PORT]/]NAME[:TAG]")
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SANDBOXD_REGISTRY_AUTH_FILE",
    help="Registry credentials (containers auth.json, as `skopeo login`/`docker login` "
    "write it; mode 0600) [env: SANDBOXD_REGISTRY_AUTH_FILE].",
)
@click.option(
    "--tls-verify/--no-tls-verify",
    default=True,
    show_default=True,
    help="Check the registry's TLS certificate (--no-tls-verify also allows plain HTTP).",
)
@click.pass_context
def pull_cmd(ctx: click.Context, ref: str, authfile: Path | None, tls_verify: bool) -> None:
    """Pull an OCI image from a registry into the store, as REF."""
    started = time.monotonic()
    try:
        with _live_progress(f"pulling {ref}") as progress:
            info = pull_image(
                _store(ctx), ref, authfile=authfile, tls_verify=tls_verify, progress=progress
            )
    except ImageError as exc:
        raise click.ClickException(str(exc)) from None
    took = time.monotonic() - started
    click.echo(f"{info.ref} pulled in {took:.1f}s ({_human(info.size_bytes)}): {info.rootfs}")


@images_group.command("rm")
@click.argument("refs", metavar="NAME[:TAG]...", nargs=-1, required=True)
@click.pass_context
def rm_cmd(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove images; refused for an image a live sandbox of this data directory uses."""
    store = _store(ctx)
    backend = store.data_dir / "backend"
    for ref in refs:
        try:
            info = store.get(ref)
            users = sandboxes_using([backend / "sandboxes", backend / "warm"], info.rootfs)
            if users:
                shown = ", ".join(users[:5]) + (
                    f" and {len(users) - 5} more" if len(users) > 5 else ""
                )
                raise ImageError(f"{info.ref} is used by live sandboxes: {shown}; stop them first")
            store.remove(ref)
        except ImageError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"removed {info.ref}")


def _profiles_by_image(config_path: Path | None) -> dict[str, list[str]]:
    """Profile names by the image they name, from ``config_path`` (default: embedded)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    found: dict[str, list[str]] = {}
    for profile in config.profiles:
        image = profile.spec.container_image
        if image:
            name, tag = parse_name(image)
            found.setdefault(f"{name}:{tag}", []).append(profile.display_name)
    return found


@images_group.command("ls")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The platform configuration whose profiles to show (default: the embedded one).",
)
@click.pass_context
def ls_cmd(ctx: click.Context, config_path: Path | None) -> None:
    """List images with their size and the profiles that name them."""
    images = _store(ctx).list_images()
    if not images:
        click.echo("no images; buildable: " + ", ".join(sorted(RECIPES)))
        return
    profiles = _profiles_by_image(config_path)
    width = max(len(i.ref) for i in images)
    click.echo(f"{'IMAGE':<{width}}  {'SIZE':>8}  {'SOURCE':<24}  {'CREATED':<16}  PROFILES")
    for info in images:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created_at))
        size = _human(info.size_bytes)
        used = ", ".join(profiles.get(info.ref, [])) or "-"
        click.echo(f"{info.ref:<{width}}  {size:>8}  {info.source[:24]:<24}  {created:<16}  {used}")


__all__ = ["images_group"]
