"""Wake result waiters from a change stream on ``tasks`` (MongoDB replica sets and sharded
clusters; a standalone server refuses change streams, and waiters then poll).

One stream per backend, opened by the first waiter and shared by every waiter in the
process. It sees every write to ``tasks``, Go workers' included; an event for a task
someone waits for wakes that waiter, which re-reads the state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from ...log import get_logger

__all__ = ["ChangeNotifier"]

logger = get_logger("machinery_aio.drivers.mongo.backend")

PIPELINE: list[dict[str, Any]] = [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]
OPEN_TIMEOUT = 5.0
"""Seconds the first waiter waits for the stream to open before polling without it."""
_FINAL = ("SUCCESS", "FAILURE")
UNSUPPORTED = frozenset({40573, 115, 40324})
"""Server codes meaning "no change streams here": only on replica sets, command not
supported, unknown pipeline stage."""


class ChangeNotifier:
    """A change stream on ``tasks`` that sets the events of the tasks being waited for."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._collection = collection
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._opened: asyncio.Future[bool] | None = None
        self.unsupported = False
        """The server refused change streams (not a replica set): waiters poll."""
        self.live = False
        """The stream is open now."""

    @contextlib.contextmanager
    def watching(self, task_uuid: str) -> Iterator[asyncio.Event]:
        """An event set when ``task_uuid``'s document changes (or the stream was interrupted)."""
        event = asyncio.Event()
        self._waiters.setdefault(task_uuid, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(task_uuid)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_uuid]

    async def start(self) -> bool:
        """Open the stream if it is not open; True when events will arrive."""
        if self.unsupported:
            return False
        if self._task is None or self._task.done():
            self._opened = asyncio.get_running_loop().create_future()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mongo-change-stream")
        if self.live:
            return True
        assert self._opened is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._opened), OPEN_TIMEOUT)
        except TimeoutError:
            return False

    def _settle(self, opened: bool) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(opened)

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await self._collection.watch(PIPELINE) as stream:
                    self.live = True
                    self._settle(True)
                    self._wake_all()  # re-read: a write may have come before the stream opened
                    delay = 0.1
                    async for change in stream:
                        self._dispatch(change)
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                if exc.code not in UNSUPPORTED:
                    logger.warning("MongoDB change stream failed (%s); reopening", exc)
                else:
                    self.unsupported = True
                    self.live = False
                    self._settle(False)
                    self._wake_all()
                    logger.info("MongoDB change streams unavailable (%s); waiting by polling", exc)
                    return
            except PyMongoError as exc:
                logger.warning("MongoDB change stream interrupted (%s); reopening", exc)
            self.live = False
            self._settle(False)
            self._wake_all()
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _dispatch(self, change: dict[str, Any]) -> None:
        key = change.get("documentKey") or {}
        events = self._waiters.get(str(key.get("_id")))
        if not events:
            return
        full = change.get("fullDocument") or {}
        updated = (change.get("updateDescription") or {}).get("updatedFields") or {}
        state = full.get("state") or updated.get("state")
        if state is not None and state not in _FINAL:
            return
        for event in events:
            event.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        self.live = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._wake_all()
