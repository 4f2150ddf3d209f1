"""The Memcache result backend, in Go Machinery's layout (needs the ``memcache`` extra).

* A TaskState is stored under the bare task UUID and a GroupMeta under the bare
  group UUID, as the same JSON Go stores; with several servers a key lives on
  the server Go's gomemcache picks (CRC-32 of the key modulo the server count).
* A state after PENDING keeps the stored ``TaskName`` and ``CreatedAt`` (Go
  does not; here a ``gets``/``cas`` loop merges them without losing a race).
* Every write sets the expiry to ``results_expire_in`` (Go's 3600 s when 0).
* The chord fires once among any number of Python workers: an ``add`` of an
  owner key picks the one winner, then ``cas`` sets ``ChordTriggered`` in the
  GroupMeta for Go readers. Go workers finishing members of the same chord use
  Go's own unlocked read-then-write and may still fire it a second time.
* memcached cannot notify: waiting re-reads with a short capped back-off.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from itertools import groupby
from typing import TYPE_CHECKING, TypeVar

import aiomcache

from ...gotime import ZERO_TIME, now
from ...log import get_logger
from ...state import GroupMeta, TaskState
from ..backend import ResultBackend, keep_origin
from ..polling import wait_by_reading
from .servers import Servers, check_key, is_connection_error

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["MemcacheBackend", "chord_owner_key"]

logger = get_logger("machinery_aio.drivers.memcache.backend")

T = TypeVar("T")

THIRTY_DAYS = 30 * 24 * 3600
"""memcached reads a larger expiry as an absolute Unix time."""
GET_CHUNK = 100
"""Keys per ``get`` command."""
_CACHED = 4096
"""Tasks (and groups) whose origin (member list) a backend remembers."""
_FINAL = re.compile(rb'"State":"(SUCCESS|FAILURE)"')
GO_LOCK_WAIT = 2.0
"""Seconds to wait for a Go worker's ``Lock`` flag on a GroupMeta to clear."""


def chord_owner_key(group_uuid: str) -> str:
    """The key whose ``add`` decides who fires the chord (not a Go key; Go never reads it)."""
    return f"{group_uuid}:chord_owner"


class MemcacheBackend(ResultBackend):
    """Task states and group metadata in memcached, as Go Machinery stores them."""

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.servers = Servers(self.url)
        self._origins: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
        """Task name and creation time of tasks this process stored lately."""
        self._members: OrderedDict[str, list[str]] = OrderedDict()

    async def connect(self) -> None:
        """Reach every server once, so a wrong address fails here and not in a task."""
        for index, client in enumerate(self.servers.clients):
            host, port = self.servers.addresses[index]
            await self.servers.run(client.version, f"reaching {host}:{port}")

    async def close(self) -> None:
        await self.servers.close()

    def exptime(self) -> int:
        """The expiry to send: seconds, or an absolute time beyond memcached's 30 days."""
        seconds = self.expires_in
        return seconds if seconds <= THIRTY_DAYS else int(time.time()) + seconds

    async def _run(self, key: bytes, what: str, call: Callable[[aiomcache.Client], Awaitable[T]]) -> T:
        client = self.servers.client_for(key)
        try:
            return await self.servers.run(lambda: call(client), f"{what} {key.decode()}")
        except aiomcache.ClientException as exc:
            raise RuntimeError(f"memcached refused to {what} {key.decode()}: {exc}") from None

    async def _get(self, key: bytes) -> bytes | None:
        return await self._run(key, "read", lambda c: c.get(key))

    async def _gets(self, key: bytes) -> tuple[bytes | None, int | None]:
        return await self._run(key, "read", lambda c: c.gets(key))

    async def _set(self, key: bytes, data: bytes, exptime: int) -> bool:
        return await self._run(key, "store", lambda c: c.set(key, data, exptime))

    async def _add(self, key: bytes, data: bytes, exptime: int) -> bool:
        return await self._run(key, "store", lambda c: c.add(key, data, exptime))

    async def _cas(self, key: bytes, data: bytes, token: int, exptime: int) -> bool:
        return await self._run(key, "store", lambda c: c.cas(key, data, token, exptime))

    # -- writes ---------------------------------------------------------------------

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """Each task's states in order; different tasks at once."""
        runs = [list(run) for _, run in groupby(states, _task_uuid)]
        if len({run[0].task_uuid for run in runs}) < len(runs):  # a task twice, apart: in order
            for run in runs:
                await self._store_run(run)
        elif len(runs) == 1:
            await self._store_run(runs[0])
        else:
            await asyncio.gather(*(self._store_run(run) for run in runs))

    async def _store_run(self, states: list[TaskState]) -> None:
        """One write for consecutive states of a task (RECEIVED then STARTED): the last,
        with the task name and creation time of the earlier ones."""
        last = states[0]
        for state in states[1:]:
            last = keep_origin(state, last)
        await self._store(last)

    async def _store(self, state: TaskState) -> None:
        key = check_key(state.task_uuid)
        exptime = self.exptime()
        known = self._origins.get(state.task_uuid)
        if known is not None:  # this process wrote or read the task's origin: no read needed
            state = keep_origin(state, TaskState(task_name=known[0], created_at=known[1]))
        if state.task_name and state.created_at != ZERO_TIME:
            await self._set(key, state.to_json(), exptime)
            self._remember_origin(state)
            return
        while True:  # keep the stored task name and creation time; a cas lost to a race retries
            stored, token = await self._gets(key)
            if stored is None or token is None:
                if await self._add(key, state.to_json(), exptime):
                    self._remember_origin(state)
                    return
                continue
            merged = keep_origin(state, _parse_state_or_none(stored))
            if await self._cas(key, merged.to_json(), token, exptime):
                self._remember_origin(merged)
                return

    def _remember_origin(self, state: TaskState) -> None:
        if not state.task_name or state.created_at == ZERO_TIME:
            return
        self._origins[state.task_uuid] = (state.task_name, state.created_at)
        self._origins.move_to_end(state.task_uuid)
        while len(self._origins) > _CACHED:
            self._origins.popitem(last=False)

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        key = check_key(group_uuid)
        data = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now()).to_json()
        await self._set(key, data, self.exptime())

    # -- reads ------------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        key = check_key(task_uuid)
        data = await self._get(key)
        return None if data is None else _parse_state(task_uuid, data)

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        found = await self._get_many(task_uuids)
        states: list[TaskState | None] = []
        for uuid in task_uuids:
            data = found.get(uuid.encode())
            states.append(None if data is None else _parse_state(uuid, data))
        return states

    async def _get_many(self, uuids: Sequence[str]) -> dict[bytes, bytes]:
        """The records of ``uuids`` that exist: one ``get`` per server and 100 keys."""
        keys = list(dict.fromkeys(check_key(u) for u in uuids))
        found: dict[bytes, bytes] = {}

        async def fetch(index: int, chunk: list[bytes]) -> None:
            client = self.servers.clients[index]
            what = f"read {len(chunk)} keys"
            try:
                values = await self.servers.run(lambda: client.multi_get(*chunk), what)
            except aiomcache.ClientException as exc:
                raise RuntimeError(f"memcached refused to {what}: {exc}") from None
            found.update((k, v) for k, v in zip(chunk, values, strict=True) if v is not None)

        await asyncio.gather(
            *(
                fetch(index, owned[start : start + GET_CHUNK])
                for index, owned in self.servers.by_client(keys).items()
                for start in range(0, len(owned), GET_CHUNK)
            )
        )
        return found

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        key = check_key(group_uuid)
        data = await self._get(key)
        return None if data is None else _parse_meta(group_uuid, data)

    # -- groups and chords -----------------------------------------------------------------

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """One read of every member's record, the final ones counted without decoding."""
        uuids = self._members.get(group_uuid)
        if uuids is None:
            meta = await self.get_group_meta(group_uuid)
            if meta is None:
                return False
            uuids = meta.task_uuids
            self._members[group_uuid] = uuids
            while len(self._members) > _CACHED:
                self._members.popitem(last=False)
        found = await self._get_many(uuids)
        done = sum(1 for data in found.values() if _is_final(data))
        return done == group_task_count

    async def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller among Python workers (``add`` of the owner key)."""
        key = check_key(group_uuid)
        owner = check_key(chord_owner_key(group_uuid))
        token = secrets.token_hex(8).encode()
        exptime = self.exptime()
        meta = await self._locked_meta(group_uuid, key)
        if meta is None:
            logger.error(
                "chord of group %s cannot fire: its metadata is gone (expired or purged)", group_uuid
            )
            return False
        if meta.chord_triggered:  # fired already (by us, or by a Go worker)
            return False
        if not await self._add(owner, token, exptime):
            # Someone else's, or ours when the reply to our add was lost and it was re-sent.
            return await self._get(owner) == token
        while True:  # tell Go readers: ChordTriggered in the GroupMeta
            stored, cas = await self._gets(key)
            if stored is None or cas is None:
                return True  # expired meanwhile; we still own the chord
            meta = _parse_meta(group_uuid, stored)
            if meta.chord_triggered:
                logger.warning("chord of group %s was also triggered by a Go worker", group_uuid)
                return True
            meta.chord_triggered = True
            meta.lock = False
            data = meta.to_json()
            if await self._cas(key, data, cas, exptime):
                return True

    async def _locked_meta(self, group_uuid: str, key: bytes) -> GroupMeta | None:
        """The GroupMeta, after waiting (briefly) for a Go worker's ``Lock`` flag to clear."""
        deadline = time.monotonic() + GO_LOCK_WAIT
        while True:
            data = await self._get(key)
            if data is None:
                return None
            meta = _parse_meta(group_uuid, data)
            if not meta.lock or time.monotonic() > deadline:
                return meta
            await asyncio.sleep(0.005)

    # -- waiting ------------------------------------------------------------------------

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        """Re-read the state until it is final: after 5 ms, then half as long again each
        time, up to 0.1 s (memcached cannot notify). A lost connection only delays it."""
        key = check_key(task_uuid)
        client = self.servers.client_for(key)
        warned = False

        async def read() -> TaskState | None:
            nonlocal warned
            try:
                data = await client.get(key)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if not warned:
                    logger.warning(
                        "memcached unreachable while waiting for %s (%s); retrying", task_uuid, exc
                    )
                    warned = True
                return None
            return None if data is None else _parse_state(task_uuid, data)

        return await wait_by_reading(read, asyncio.sleep, task_uuid, timeout)


def _task_uuid(state: TaskState) -> str:
    return state.task_uuid


def _parse_state(task_uuid: str, data: bytes) -> TaskState:
    try:
        return TaskState.from_json(data)
    except ValueError as exc:
        raise ValueError(f"the record under {task_uuid!r} is not a TaskState: {exc}") from None


def _is_final(data: bytes) -> bool:
    """The first ``"State"`` of TaskState JSON is the record's own (it precedes Results)."""
    match = _FINAL.search(data)
    return match is not None and data.find(b'"State":"') == match.start()


def _parse_state_or_none(data: bytes) -> TaskState | None:
    try:
        return TaskState.from_json(data)
    except ValueError:
        return None


def _parse_meta(group_uuid: str, data: bytes) -> GroupMeta:
    try:
        return GroupMeta.from_json(data)
    except ValueError as exc:
        raise ValueError(f"the record under {group_uuid!r} is not a GroupMeta: {exc}") from None
