"""The v1 rows (:mod:`sandboxd.store.v1_resources`) from the event loop.

Why a thread of its own: the store is synchronous; its calls run on one worker thread, and
database failures become the same UNAVAILABLE every other store call answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from sandboxd.controlplane.store_errors import store_unavailable
from sandboxd.store.v1_resources import V1Resource, V1ResourceStore

T = TypeVar("T")


class V1Resources:
    """Async access to the v1 rows."""

    def __init__(self, store: V1ResourceStore) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="v1-store")

    async def _call(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work)
        except SQLAlchemyError as exc:
            raise store_unavailable(exc) from exc

    async def add(self, resource: V1Resource) -> None:
        """Keep a new sandbox's row (RequestIdTaken if its request id is used already)."""
        await self._call(lambda: self._store.add(resource))

    async def get(self, sandbox_id: str) -> V1Resource | None:
        """The row of one sandbox, if it has one."""
        return await self._call(lambda: self._store.get(sandbox_id))

    async def get_many(self, sandbox_ids: list[str]) -> dict[str, V1Resource]:
        """The rows of several sandboxes, by id."""
        return await self._call(lambda: self._store.get_many(sandbox_ids))

    async def by_request(self, owner_org: str, request_id: str) -> V1Resource | None:
        """The organization's sandbox created with ``request_id``, if it still exists."""
        return await self._call(lambda: self._store.by_request(owner_org, request_id))

    async def prune(self) -> int:
        """Forget a batch of rows whose sandboxes are gone."""
        return await self._call(self._store.prune)

    def close(self) -> None:
        """Finish pending calls."""
        self._executor.shutdown(wait=True)
