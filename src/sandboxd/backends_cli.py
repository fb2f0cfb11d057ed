"""``sandboxd backends``: the backend catalog, and the conformance checks run against one.

Why a command: someone writing a backend outside this repository (a VM backend, a remote
one) registers it under the ``sandboxd.backends`` entry-point group and runs
``sandboxd backends check NAME`` on a test host to see, check by check, whether it can stand
in for the local backend. The checks are the ones the project's own tests run
(``sandboxd.backends.conformance``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import click

from sandboxd.backends import BUILTIN_BACKENDS, available_backend_names, build_backend
from sandboxd.backends.base import Backend, BackendConfig
from sandboxd.backends.conformance import (
    CHECKS,
    CheckResult,
    Harness,
    destroy_leftovers,
    run_checks,
)
from sandboxd.paths import default_data_dir

EXIT_FAILED = 1
EXIT_USAGE = 2


@click.group("backends")
def backends_group() -> None:
    """The sandbox backends this installation knows, and their conformance checks."""


@backends_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def backends_ls(as_json: bool) -> None:
    """List backend names, built-in or installed through the entry-point group."""
    for name in available_backend_names():
        origin = "built-in" if name in BUILTIN_BACKENDS else "entry point"
        if as_json:
            click.echo(json.dumps({"name": name, "origin": origin}))
        else:
            click.echo(f"{name}\t{origin}")


def _require_image(refs: list[str], ref: str, option: str) -> None:
    if ref not in refs:
        raise click.BadParameter(
            f"image {ref!r} is not available to this backend "
            f"(for the local backend: `sandboxd images build {ref}`)",
            param_hint=option,
        )


def _selected(names: tuple[str, ...]) -> list[object]:
    by_name = {check.__name__.removeprefix("check_"): check for check in CHECKS}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise click.BadParameter(
            f"no check named {', '.join(unknown)}; known: {', '.join(by_name)}",
            param_hint="--only",
        )
    return [by_name[name] for name in names] if names else list(CHECKS)


@backends_group.command("check")
@click.argument("name")
@click.option(
    "--images-dir",
    envvar="SANDBOXD_DATA_DIR",
    default=lambda: str(default_data_dir()),
    show_default="user data directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="sandboxd data directory holding the image store",
)
@click.option("--image", default="busybox:latest", show_default=True, help="busybox image")
@click.option("--python-image", default=None, help="also run the python:3.11 image check")
@click.option("--only", multiple=True, help="run only this check (repeatable)")
@click.option("--timeout", default=120.0, show_default=True, help="seconds per check")
def backends_check(  # noqa: PLR0917 - one per option, as click passes them
    name: str,
    images_dir: Path,
    image: str,
    python_image: str | None,
    only: tuple[str, ...],
    timeout: float,
) -> None:
    """Run the conformance checks against backend NAME in a scratch data directory.

    Exits 0 when every check passes, 1 when one fails, 2 on a usage error. The scratch
    directory and every sandbox the checks made are removed after.
    """
    if name not in available_backend_names():
        known = ", ".join(available_backend_names())
        raise click.BadParameter(f"{name!r} is not a backend; known: {known}", param_hint="NAME")
    checks = _selected(only)
    scratch = Path(tempfile.mkdtemp(prefix=f"sandboxd-check-{name}-"))
    try:
        # The scratch data directory sees the image store of --images-dir (where a backend
        # keeping its images in the data directory, like the local one, looks for them).
        (scratch / "images").symlink_to((images_dir / "images").absolute())
        backend = build_backend(name, BackendConfig(scratch))
        refs = backend.image_refs()
        _require_image(refs, image, "--image")
        if python_image:
            _require_image(refs, python_image, "--python-image")
        results = asyncio.run(
            _run(
                name,
                scratch,
                backend,
                image=image,
                python_image=python_image,
                checks=checks,
                timeout=timeout,
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for result in results:
        mark = "ok  " if result.passed else "FAIL"
        click.echo(f"{mark} {result.name} ({result.seconds:.1f}s){_why(result)}")
    failed = [r for r in results if not r.passed]
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise SystemExit(EXIT_FAILED)


def _why(result: CheckResult) -> str:
    return f": {result.error}" if result.error else ""


async def _run(
    name: str,
    scratch: Path,
    backend: Backend,
    *,
    image: str,
    python_image: str | None,
    checks: list[object],
    timeout: float,
) -> list[CheckResult]:
    def reopen() -> Backend:
        return build_backend(name, BackendConfig(scratch))

    harness = Harness(backend, image, python_image, reopen, prefix="check-")
    try:
        return await run_checks(harness, checks, timeout=timeout)  # type: ignore[arg-type]
    finally:
        await destroy_leftovers(harness)
        await backend.close()


__all__ = ["backends_group"]
