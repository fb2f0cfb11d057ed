"""Images in heartbeats, both ends: the runner re-lists its store, the registry takes the list.

An image built while the runner is connected must become placeable without a redial, so the
runner sends its image list with every heartbeat (re-listing the store at most every few
seconds) and the control plane's registry replaces ``capabilities.images`` with it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxd.config import load_config
from sandboxd.controlplane.registry import RunnerRegistry
from sandboxd.runner.images import ImageList
from sandboxd_protocol.sandboxd_v1 import runner_pb2
from tests.unit.runner.backend_standin import StandinBackend
from tests.unit.runner.exec_standin import image_store
from tests.unit.runner.test_runner_agent_sandboxes import make_agent, run_agent


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_image_list_is_cached_between_relists(tmp_path: Path) -> None:
    store = image_store(tmp_path)
    clock = Clock()
    images = ImageList(store.refs, interval=5.0, clock=clock)
    assert images.current() == ["busybox", "busybox:latest"]
    store.publish("python:3.11", tmp_path / "rootfs", source="test", link=True)
    clock.now += 4.9
    assert images.current() == ["busybox", "busybox:latest"]  # cached
    assert "python:3.11" in images.current(fresh=True)
    store.remove("python:3.11")
    assert "python:3.11" in asyncio.run(images.refreshed())  # still cached
    clock.now += 5.1
    assert asyncio.run(images.refreshed()) == ["busybox", "busybox:latest"]  # re-listed


def test_heartbeats_carry_images_built_while_connected(
    fake_control_plane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sandboxd.runner.images.RELIST_SECONDS", 0.3)

    async def main() -> None:
        store = image_store(tmp_path)
        async with fake_control_plane() as cp:
            agent = make_agent(cp.url, tmp_path, backend=StandinBackend(images=store))

            async def body() -> None:
                register = (await cp.next_message("register")).message.register
                assert "python:3.11" not in register.capabilities.images
                beat = (await cp.next_message("heartbeat")).message.heartbeat
                assert beat.images_listed and list(beat.images) == ["busybox", "busybox:latest"]
                store.publish("python:3.11", tmp_path / "rootfs", source="test", link=True)
                async with asyncio.timeout(10):
                    while "python:3.11" not in beat.images:
                        beat = (await cp.next_message("heartbeat")).message.heartbeat

            await run_agent(agent, body)

    asyncio.run(main())


def test_a_runner_without_a_backend_does_not_list(fake_control_plane, tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_control_plane() as cp:
            agent = make_agent(cp.url, tmp_path)

            async def body() -> None:
                beat = (await cp.next_message("heartbeat")).message.heartbeat
                assert not beat.images_listed and not beat.images

            await run_agent(agent, body)

    asyncio.run(main())


def test_registry_takes_images_from_heartbeats() -> None:
    changed: list[str] = []
    registry = RunnerRegistry(load_config(None), on_change=changed.append)
    caps = runner_pb2.Capabilities(cpu_millicores=1000, images=["python:3.11"])
    state, conn = registry.register(runner_pb2.Register(runner_id="r1", capabilities=caps))
    changed.clear()
    resources = runner_pb2.Resources()
    assert registry.heartbeat("r1", conn, resources, images=["python:3.11"])
    assert changed == []  # unchanged list: nothing to persist
    assert registry.heartbeat("r1", conn, resources, images=["fresh:1", "python:3.11"])
    assert list(state.capabilities.images) == ["fresh:1", "python:3.11"]
    assert state.capabilities.cpu_millicores == 1000 and changed == ["r1"]
    assert registry.heartbeat("r1", conn, resources)  # not listed: keep what we have
    assert list(state.capabilities.images) == ["fresh:1", "python:3.11"]
    assert list(caps.images) == ["python:3.11"]  # the Register message is not modified
    _, newer = registry.register(runner_pb2.Register(runner_id="r1", capabilities=caps))
    assert not registry.heartbeat("r1", conn, resources, images=[])  # superseded connection
    assert list(state.capabilities.images) == ["python:3.11"]
    assert registry.heartbeat("r1", newer, resources, images=[])
    assert list(state.capabilities.images) == []
