"""The MongoDB result backend, in Go Machinery's layout (needs the ``mongo`` extra).

* Collections ``tasks`` and ``group_metas`` in the database :func:`database_name` picks;
  documents with Go's field names (``_id``, ``state``, ``task_name``, ``created_at``,
  ``results: [{type, value}]``, ``error``; ``task_uuids``, ``chord_triggered``, ``lock``).
* Every write is an upsert with ``$set`` (as Go's), so fields a state has no value for
  (the task name and creation time after PENDING) keep what is stored.
* Every write sets ``delete_at`` = now + ``results_expire_in`` (3600 s when 0, where Go
  uses 0 s), and a TTL index on ``delete_at`` in both collections deletes the documents;
  reads treat a document past its ``delete_at`` as gone (MongoDB's TTL monitor runs
  once a minute).
* The chord fires once: ``find_one_and_update({_id, chord_triggered: false})`` is atomic;
  the winner's token in the document answers a retried call whose reply was lost.
* Waiting: woken by a change stream where the server has them (replica sets), else by
  re-reading with a short capped back-off.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.mongo_client import AsyncMongoClient
from pymongo.errors import OperationFailure

from ...gotime import now
from ...log import get_logger
from ...state import GroupMeta, State, TaskState
from ..backend import ResultBackend, keep_origin
from ..polling import MAX_PAUSE, wait_by_reading
from .connection import create_client, database_name, is_connection_error, run
from .documents import group_document, parse_group, parse_task, task_update
from .notify import ChangeNotifier

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["GROUPS", "TASKS", "MongoBackend"]

logger = get_logger("machinery_aio.drivers.mongo.backend")

TASKS = "tasks"
GROUPS = "group_metas"
NOTIFIED_PAUSE = 1.0
"""The longest pause between re-reads while a change stream is open (a safety net)."""
_FINAL = [State.SUCCESS.value, State.FAILURE.value]
_GROUP_CACHE = 1024

Document = dict[str, Any]


class MongoBackend(ResultBackend):
    """Task states and group metadata in MongoDB, as Go Machinery stores them."""

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.database = database_name(self.url, config)
        self._client: AsyncMongoClient[Document] | None = None
        self._notifier: ChangeNotifier | None = None
        self._indexed = False
        self._members: OrderedDict[str, list[str]] = OrderedDict()

    # -- connections ------------------------------------------------------------------

    @property
    def client(self) -> AsyncMongoClient[Document]:
        if self._client is None:
            self._client = create_client(self.url)
        return self._client

    @property
    def tasks(self) -> AsyncCollection[Document]:
        return self.client[self.database][TASKS]

    @property
    def groups(self) -> AsyncCollection[Document]:
        return self.client[self.database][GROUPS]

    async def connect(self) -> None:
        """Reach the server and create the TTL indexes (Go's ``{delete_at: 1}``)."""
        if self._indexed:
            return
        for collection in (self.tasks, self.groups):
            try:
                await run(
                    lambda c=collection: c.create_index(  # type: ignore[misc]
                        [("delete_at", 1)], expireAfterSeconds=0, background=True
                    ),
                    f"indexing {collection.name}",
                )
            except OperationFailure as exc:  # another index on delete_at, or not allowed
                logger.warning(
                    "no TTL index on %s.%s.delete_at (%s): expired documents are ignored but not deleted",
                    self.database,
                    collection.name,
                    exc,
                )
        self._indexed = True

    async def close(self) -> None:
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        client, self._client = self._client, None
        self._indexed = False
        if client is not None:
            await client.close()

    def _delete_at(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.expires_in)

    # -- writes -------------------------------------------------------------------------

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """One ``$set`` upsert per task (consecutive states of a task are one: the last,
        with the task name and creation time of the earlier ones), in one bulk write."""
        if not states:
            return
        states = [_last_of(list(run)) for _, run in groupby(states, _task_uuid)]
        delete_at = self._delete_at()
        if len(states) == 1:
            uuid, update = states[0].task_uuid, {"$set": task_update(states[0], delete_at)}
            await run(lambda: self.tasks.update_one({"_id": uuid}, update, upsert=True), f"storing {uuid}")
            return
        ops = [
            UpdateOne({"_id": s.task_uuid}, {"$set": task_update(s, delete_at)}, upsert=True) for s in states
        ]
        await run(lambda: self.tasks.bulk_write(ops, ordered=True), f"storing {len(ops)} states")

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        doc = group_document(meta, self._delete_at())
        await run(
            lambda: self.groups.replace_one({"_id": group_uuid}, doc, upsert=True), f"storing {group_uuid}"
        )
        self._remember(group_uuid, meta.task_uuids)

    # -- reads ----------------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        doc = await run(lambda: self.tasks.find_one({"_id": task_uuid}), f"reading {task_uuid}")
        return _live_task(doc)

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        if not task_uuids:
            return []
        wanted = list(dict.fromkeys(task_uuids))

        async def find() -> list[Document]:
            return [d async for d in self.tasks.find({"_id": {"$in": wanted}})]

        docs = await run(find, f"reading {len(wanted)} states")
        found = {str(d.get("_id")): d for d in docs}
        return [_live_task(found.get(u)) for u in task_uuids]

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        doc = await run(lambda: self.groups.find_one({"_id": group_uuid}), f"reading {group_uuid}")
        if doc is None or _expired(doc):
            return None
        return parse_group(doc)

    # -- groups and chords --------------------------------------------------------------------

    def _remember(self, group_uuid: str, task_uuids: list[str]) -> None:
        self._members[group_uuid] = task_uuids
        self._members.move_to_end(group_uuid)
        while len(self._members) > _GROUP_CACHE:
            self._members.popitem(last=False)

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """One read of the members' states (only the ``state`` field) once the member
        list is known."""
        uuids = self._members.get(group_uuid)
        if uuids is None:
            meta = await self.get_group_meta(group_uuid)
            if meta is None:
                return False
            uuids = meta.task_uuids
            self._remember(group_uuid, uuids)
        wanted = uuids

        async def count() -> int:
            cursor = self.tasks.find({"_id": {"$in": wanted}}, projection={"state": 1})
            return sum([1 async for d in cursor if d.get("state") in _FINAL])

        return await run(count, f"counting {group_uuid}") == group_task_count

    async def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller: the one whose update flips ``chord_triggered``."""
        token = secrets.token_hex(8)
        flipped = await run(
            lambda: self.groups.find_one_and_update(
                {"_id": group_uuid, "chord_triggered": False},
                {"$set": {"chord_triggered": True, "chord_owner": token}},
                projection={"_id": 1},
                return_document=ReturnDocument.AFTER,
            ),
            f"triggering the chord of {group_uuid}",
        )
        if flipped is not None:
            return True
        doc = await run(lambda: self.groups.find_one({"_id": group_uuid}), f"reading {group_uuid}")
        if doc is None:
            logger.error(
                "chord of group %s cannot fire: its metadata is gone (expired or purged)", group_uuid
            )
            return False
        return bool(doc.get("chord_owner") == token)  # ours, if the reply to our update was lost

    # -- waiting ----------------------------------------------------------------------------

    @property
    def notifier(self) -> ChangeNotifier:
        if self._notifier is None:
            self._notifier = ChangeNotifier(self.tasks)
        return self._notifier

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        """Re-read the state until it is final, woken early by the change stream where
        the server has one; without it the pause grows from 5 ms to 0.1 s."""
        warned = False

        async def read() -> TaskState | None:
            nonlocal warned
            try:
                doc = await self.tasks.find_one({"_id": task_uuid})
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if not warned:
                    logger.warning("MongoDB unreachable while waiting for %s (%s); retrying", task_uuid, exc)
                    warned = True
                return None
            return _live_task(doc)

        notifier = self.notifier
        with notifier.watching(task_uuid) as event:
            live = await notifier.start()

            async def pause(seconds: float) -> None:
                try:
                    await asyncio.wait_for(event.wait(), seconds)
                except TimeoutError:
                    pass
                event.clear()

            cap = NOTIFIED_PAUSE if live else MAX_PAUSE
            return await wait_by_reading(read, pause, task_uuid, timeout, cap=cap)


def _task_uuid(state: TaskState) -> str:
    return state.task_uuid


def _last_of(states: list[TaskState]) -> TaskState:
    last = states[0]
    for state in states[1:]:
        last = keep_origin(state, last)
    return last


def _expired(doc: Document) -> bool:
    delete_at = doc.get("delete_at")
    if not isinstance(delete_at, datetime):
        return False
    if delete_at.tzinfo is None:
        delete_at = delete_at.replace(tzinfo=UTC)
    return delete_at <= datetime.now(UTC)


def _live_task(doc: Document | None) -> TaskState | None:
    if doc is None or _expired(doc):
        return None
    return parse_task(doc)
