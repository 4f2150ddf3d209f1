"""The embedded ``memory://`` result backend.

Records are kept as the same JSON a network backend stores, with expiry.
Every change happens without an ``await`` in between, so group and chord
updates are atomic within the process, and waiters are woken at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ...gotime import ZERO_TIME, now
from ...state import GroupMeta, TaskState
from ..backend import BackendCapabilities, ResultBackend, keep_origin
from ..control import ControlChannel
from ..registry import WorkerRegistry
from .control import MemoryControl
from .store import shared, store_name

__all__ = ["MemoryBackend"]


class _Store:
    def __init__(self) -> None:
        self.records: dict[str, tuple[bytes, float]] = {}  # uuid -> (json, expires at)
        self.states: dict[str, TaskState] = {}  # uuid -> the state last stored (saves a decode)
        self.waiters: dict[str, asyncio.Event] = {}
        self.workers: dict[str, tuple[bytes, float]] = {}  # worker key -> (record, expires at)

    def get(self, key: str) -> bytes | None:
        found = self.records.get(key)
        if found is None:
            return None
        data, expires = found
        if expires < time.monotonic():
            del self.records[key]
            self.states.pop(key, None)
            return None
        return data

    def put(self, key: str, data: bytes, ttl: float) -> None:
        self.records[key] = (data, time.monotonic() + ttl)


class MemoryBackend(ResultBackend, WorkerRegistry):
    """In-process result backend; ``memory://name`` instances with the same name share records."""

    capabilities = BackendCapabilities(in_process=True)
    namespace = ""
    """Prefix of the store name, so that subclasses keep their records apart."""

    @property
    def _store(self) -> _Store:
        loop = asyncio.get_running_loop()
        cached = self.__dict__.get("_cached")
        if cached is not None and cached[0] is loop:
            store: _Store = cached[1]
            return store
        store = shared(_Store, self.namespace + store_name(self.url), _Store)
        self.__dict__["_cached"] = (loop, store)
        return store

    def control_channel(self) -> ControlChannel:
        """Revocations reach the workers of this process's store (needs a running loop)."""
        return shared(MemoryControl, store_name(self.url), MemoryControl)

    async def set_states(self, states: Sequence[TaskState]) -> None:
        for state in states:
            self._write(state)

    def _write(self, state: TaskState) -> None:
        store = self._store
        if not state.task_name or state.created_at == ZERO_TIME:
            stored = store.states.get(state.task_uuid) if store.get(state.task_uuid) is not None else None
            state = keep_origin(state, stored)
        store.put(state.task_uuid, state.to_json(), self.expires_in)
        store.states[state.task_uuid] = state
        if state.is_completed():
            event = store.waiters.pop(state.task_uuid, None)
            if event is not None:
                event.set()

    def _read(self, task_uuid: str) -> TaskState | None:
        data = self._store.get(task_uuid)
        return None if data is None else TaskState.from_json(data)

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        self._store.put(group_uuid, meta.to_json(), self.expires_in)

    async def get_state(self, task_uuid: str) -> TaskState | None:
        return self._read(task_uuid)

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        data = self._store.get(group_uuid)
        return None if data is None else GroupMeta.from_json(data)

    async def trigger_chord(self, group_uuid: str) -> bool:
        store = self._store
        data = store.get(group_uuid)
        if data is None:
            return False
        meta = GroupMeta.from_json(data)
        if meta.chord_triggered:
            return False
        meta.chord_triggered = True
        store.put(group_uuid, meta.to_json(), self.expires_in)
        return True

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        store = self._store
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self._read(task_uuid)
            if state is not None and state.is_completed():
                return state
            event = store.waiters.get(task_uuid)
            if event is None:
                event = store.waiters[task_uuid] = asyncio.Event()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s") from None

    # -- worker registry (heartbeats) ----------------------------------------------------

    async def record_worker(self, key: str, data: bytes, expires_at: float) -> None:
        self._store.workers[key] = (data, expires_at)

    async def remove_worker(self, key: str) -> None:
        self._store.workers.pop(key, None)

    async def list_workers(self) -> list[bytes]:
        workers, now = self._store.workers, time.time()
        for key in [key for key, (_, expires) in workers.items() if expires <= now]:
            del workers[key]
        return [data for data, _ in workers.values()]
