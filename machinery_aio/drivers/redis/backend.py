"""The Redis result backend, in Go Machinery's layout (needs the ``redis`` extra).

* A TaskState is stored under the bare task UUID, a GroupMeta under the bare
  group UUID, as Go's JSON, each written with ``SET <uuid> <json> EX
  <results_expire_in>`` in one command.
* A state after PENDING keeps the stored ``TaskName`` and ``CreatedAt`` (Go
  reads and rewrites; here one Lua script does it in the same round trip), and
  a final state is PUBLISHed in the same script so waiters wake at once.
* State writes from concurrent tasks are pipelined (:class:`CommandBatcher`).
* The chord trigger is one atomic script; with ``go_compatible`` it runs under
  Go's ``TriggerChordMutex`` so Go workers finishing members of the same chord
  stay exclusive with us.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from contextlib import AsyncExitStack
from itertools import groupby
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json
from redis.exceptions import RedisError

from ...gotime import ZERO_TIME, format_time, now
from ...log import get_logger
from ...state import GroupMeta, State, TaskState
from ..backend import ResultBackend
from ..control import ControlChannel
from ..registry import WorkerRegistry
from . import workers
from .batcher import Command, CommandBatcher, RedisHandle, run_script
from .connection import RedisClient, is_cluster
from .lock import RedsyncMutex
from .notify import CHANNEL_PREFIX, ResultNotifier, Watch
from .state_scripts import COUNT_COMPLETED, SET_STATE, TRIGGER_CHORD

if TYPE_CHECKING:
    from ...config import Config
    from ...signature import Signature

__all__ = ["RedisBackend"]

logger = get_logger("machinery_aio.drivers.redis.backend")

CHORD_MUTEX = "TriggerChordMutex"
POLL_MAX = 1.0
"""Longest pause between re-reads while waiting (covers states written by Go workers)."""
_STATE = re.compile(rb'"State":"([A-Z]+)"')
_NAME_KEY = b',"TaskName":'
_STATE_KEY = b',"State":"'
_CREATED_KEY = b',"CreatedAt":'
_TTL_KEY = b',"TTL":'
_GROUP_CACHE = 1024


def chord_owner_key(group_uuid: str) -> str:
    """Who triggered the chord, in the group key's slot (not a Go key; Go never reads it)."""
    return f"{{{group_uuid}}}:chord_owner"


class RedisBackend(ResultBackend, WorkerRegistry):
    """Task states and group metadata in Redis, as Go Machinery stores them."""

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.cluster = is_cluster(self.url, config)
        self._redis = RedisHandle.shared(self.url, config, self)
        self._notifier: ResultNotifier | None = None
        self._members: OrderedDict[str, list[str]] = OrderedDict()
        self._control: ControlChannel | None = None

    # -- connections ---------------------------------------------------------------

    @property
    def client(self) -> RedisClient:
        return self._redis.client

    @property
    def batcher(self) -> CommandBatcher:
        return self._redis.batcher

    @property
    def notifier(self) -> ResultNotifier:
        if self._notifier is None:
            self._notifier = ResultNotifier(self.client)
        return self._notifier

    async def connect(self) -> None:
        self._redis.attach(self)
        await self._redis.reach()

    async def close(self) -> None:
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        await self._redis.close(self)

    def control_channel(self) -> ControlChannel:
        """Revocations in a sorted set, announced by pub/sub (``control.py``)."""
        if self._control is None:
            from .control import RedisControl

            self._control = RedisControl(self)
        return self._control

    # -- writes ------------------------------------------------------------------------

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """One round trip, in order; a task's consecutive states (RECEIVED then STARTED)
        go in one command."""
        commands = [self._write(list(run)) for _, run in groupby(states, _task_uuid)]
        if len(commands) == 1:
            await self.batcher.run(commands[0])
        else:
            await self.batcher.execute_all(commands)

    async def set_states_soon(self, states: Sequence[TaskState]) -> Awaitable[Any]:
        """Queue one task's states for the next pipeline and return without waiting. The
        script keeps them from replacing what they must not: a PENDING never replaces the
        worker's first state, RECEIVED or STARTED never replace SUCCESS or FAILURE."""
        first = states[0]
        if first.state is State.PENDING and len(states) == 1:
            guard = "pending"
        elif all(s.state in (State.RECEIVED, State.STARTED) for s in states):
            guard = "started"
        else:
            return await super().set_states_soon(states)
        return self.batcher.submit(self._write(list(states), guard))

    async def set_final_state(self, signature: Signature, state: TaskState) -> None:
        await self.batcher.run(self._write([state]))

    def _write(self, states: list[TaskState], guard: str = "") -> Command:
        """The command storing one task's ``states`` in order."""
        last = states[-1]
        if (
            not guard
            and len(states) == 1
            and last.task_name
            and last.created_at != ZERO_TIME
            and not last.is_completed()
        ):
            return Command.of("SET", last.task_uuid, last.to_json(), "EX", self.expires_in)
        channel = CHANNEL_PREFIX + last.task_uuid if last.is_completed() else ""
        args: list[Any] = [self.expires_in, channel, guard]
        for state in states:
            head, name, middle, created, tail = _state_parts(state)
            args += [
                head,
                name if state.task_name else b"",
                middle,
                b"" if state.created_at == ZERO_TIME else created,
                tail,
            ]
        return Command.lua(SET_STATE, [last.task_uuid], args)

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        await self.batcher.execute("SET", group_uuid, meta.to_json(), "EX", self.expires_in)
        self._remember(group_uuid, meta.task_uuids)

    # -- reads -------------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        data = await self.batcher.execute("GET", task_uuid)
        return None if data is None else _parse_state(task_uuid, data)

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        raw = await self._get_many(task_uuids)
        return [None if d is None else _parse_state(u, d) for u, d in zip(task_uuids, raw, strict=True)]

    async def _get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self.cluster:
            return list(await asyncio.gather(*(self.batcher.execute("GET", k) for k in keys)))
        raw: list[bytes | None] = await self.batcher.execute("MGET", *keys)
        return raw

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        data = await self.batcher.execute("GET", group_uuid)
        if data is None:
            return None
        try:
            return GroupMeta.from_json(data)
        except ValueError as exc:
            raise ValueError(f"the record under {group_uuid!r} is not a GroupMeta: {exc}") from None

    # -- groups and chords ---------------------------------------------------------------

    def _remember(self, group_uuid: str, task_uuids: list[str]) -> None:
        self._members[group_uuid] = task_uuids
        self._members.move_to_end(group_uuid)
        while len(self._members) > _GROUP_CACHE:
            self._members.popitem(last=False)

    async def _member_uuids(self, group_uuid: str) -> list[str] | None:
        known = self._members.get(group_uuid)
        if known is not None:
            return known
        meta = await self.get_group_meta(group_uuid)
        if meta is None:
            return None
        self._remember(group_uuid, meta.task_uuids)
        return meta.task_uuids

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when ``group_task_count`` members are SUCCESS or FAILURE (one round trip
        once the member list is known; the states are counted in Redis)."""
        uuids = await self._member_uuids(group_uuid)
        if uuids is None:
            return False
        if self.cluster:
            raw = await self._get_many(uuids)
            done = sum(1 for d in raw if d is not None and _is_final(d))
        else:
            done = int(await self.batcher.script(COUNT_COMPLETED, uuids))
        return done == group_task_count

    async def trigger_chord(self, group_uuid: str) -> bool:
        """Mark the chord triggered; True for exactly one caller, Go workers included."""
        keys = [group_uuid, chord_owner_key(group_uuid)]
        args: list[Any] = [self.expires_in, secrets.token_hex(8)]
        if self.config.go_compatible:
            async with RedsyncMutex(self.client, CHORD_MUTEX):
                result = await run_script(self.client, TRIGGER_CHORD, keys, args)
        else:
            result = await self.batcher.script(TRIGGER_CHORD, keys, args)
        if result == -1:
            logger.error(
                "chord of group %s cannot fire: its metadata is gone (expired or purged)", group_uuid
            )
        return bool(result == 1)

    # -- waiting and cleanup ----------------------------------------------------------------

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        """Wait for SUCCESS or FAILURE: woken by the PUBLISH of the final state, re-reading
        the state with a growing pause (up to 1 s) in case a Go worker wrote it. Without
        notifications (pub/sub failing) it re-reads every ``interval`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        async with AsyncExitStack() as stack:
            watch: Watch | None = None
            try:
                watch = await stack.enter_async_context(self.notifier.watch(task_uuid))
            except RedisError as exc:
                logger.warning("result notifications unavailable (%s); polling for %s", exc, task_uuid)
            pause = max(interval, 0.1) if watch is not None else interval
            while True:
                state = await self.get_state(task_uuid)
                if state is not None and state.is_completed():
                    return state
                left = _left(deadline, task_uuid, timeout)
                wait = pause if left is None else min(pause, left)
                if watch is None:
                    await asyncio.sleep(wait)
                    continue
                data = await watch.wait(wait)
                if data is not None:
                    state = _parse_state(task_uuid, data)
                    if state.is_completed():
                        return state
                pause = min(POLL_MAX, pause * 2)

    # -- worker registry (heartbeats) ----------------------------------------------------

    async def record_worker(self, key: str, data: bytes, expires_at: float) -> None:
        await workers.record_worker(self.client, key, data, expires_at)

    async def remove_worker(self, key: str) -> None:
        await workers.remove_worker(self.client, key)

    async def list_workers(self) -> list[bytes]:
        return await workers.list_workers(self.client)


def _task_uuid(state: TaskState) -> str:
    return state.task_uuid


def _left(deadline: float | None, task_uuid: str, timeout: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
    return left


_PLAIN_MIDDLE = {s: f',"State":"{s.value}","Results":null,"Error":""'.encode() for s in State}


def _state_parts(state: TaskState) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """:func:`_split_state` of ``state.to_json()``; built directly for a state without
    results or error (RECEIVED, STARTED: twice per task)."""
    if state.results is None and not state.error and not state.ttl and state.progress is None:
        return (
            b'{"TaskUUID":' + to_json(state.task_uuid),
            to_json(state.task_name),
            _PLAIN_MIDDLE[state.state],
            b'"' + format_time(state.created_at).encode() + b'"',
            b',"TTL":0}',
        )
    return _split_state(state.to_json())


def _split_state(data: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Cut TaskState JSON into head, TaskName value, middle, CreatedAt value, tail."""
    name_at = data.index(_NAME_KEY)
    state_at = data.index(_STATE_KEY, name_at)
    created_at = data.rindex(_CREATED_KEY)
    ttl_at = data.rindex(_TTL_KEY)
    return (
        data[:name_at],
        data[name_at + len(_NAME_KEY) : state_at],
        data[state_at:created_at],
        data[created_at + len(_CREATED_KEY) : ttl_at],
        data[ttl_at:],
    )


def _is_final(data: bytes) -> bool:
    match = _STATE.search(data)
    return match is not None and match.group(1) in (b"SUCCESS", b"FAILURE")


def _parse_state(task_uuid: str, data: bytes) -> TaskState:
    try:
        return TaskState.from_json(data)
    except ValueError as exc:
        raise ValueError(f"the record under {task_uuid!r} is not a TaskState: {exc}") from None
