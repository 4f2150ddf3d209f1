"""Groups and chords on the AMQP result backend: Go's group queue, and an exactly-once trigger.

Go's layout: when a member of a group finishes, its final TaskState is also
published to a queue named after the group UUID. Go then counts that queue's
messages to see whether the group is complete, and its chord trigger only
checks that a queue ``<group>_chord_triggered`` does not exist, which nothing
ever creates.

Here the members that may be last take a lock first: an exclusive queue
``<group>_chord_lock``, which RabbitMQ grants to one connection at a time and
drops with that connection (a crashed worker does not leave it held). Under
the lock the group queue is read with ``basic.get``; if every member has a
final state they are acked, so the queue is empty and nobody fires again,
otherwise they are put back. A group sent from Python also keeps its member
list in ``<group>_meta``, so the callback gets results in group order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelLockedResource, ChannelNotFoundEntity
from pydantic import ValidationError

from ...gotime import now
from ...log import get_logger
from ...signature import Signature
from ...state import GroupMeta, TaskState, parse_state
from .connection import peek, retry_transient, scratch_channel

if TYPE_CHECKING:
    from .backend import AMQPBackend

__all__ = ["AMQPGroups", "lock_queue", "meta_queue"]

logger = get_logger("machinery_aio.amqp")

LOCK_WAIT = 30.0
"""Seconds a chord trigger waits for another worker's group lock before giving up."""
MAX_READ = 100_000
"""At most this many messages are read from one group queue."""
MAX_REMEMBERED = 10_000


def meta_queue(group_uuid: str) -> str:
    """Where the GroupMeta of a group sent from Python is kept (Go's AMQP backend keeps none)."""
    return f"{group_uuid}_meta"


def lock_queue(group_uuid: str) -> str:
    return f"{group_uuid}_chord_lock"


def decode_state(body: bytes, where: str) -> TaskState | None:
    """:func:`~machinery_aio.state.parse_state`, logging a message that is not a TaskState."""
    state = parse_state(body)
    if state is None:
        logger.error("result queue %r holds a message that is not a TaskState: %r", where, body[:200])
    return state


class AMQPGroups:
    """The group and chord half of :class:`~machinery_aio.drivers.amqp.backend.AMQPBackend`."""

    def __init__(self, backend: AMQPBackend) -> None:
        self.backend = backend
        self._sizes: dict[str, int] = {}
        self._fired: dict[str, list[TaskState]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it

    async def init(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        await self.backend.store(meta_queue(group_uuid), meta.to_json())

    async def member_done(self, signature: Signature, body: bytes) -> None:
        """Go's ``markTaskCompleted``: a member's final state (``body``) also goes to the
        group's queue."""
        if signature.group_uuid and signature.group_task_count:
            await self.backend.store(signature.group_uuid, body)

    async def meta(self, group_uuid: str) -> GroupMeta | None:
        for attempt in range(5):
            async with scratch_channel(await self.backend.connection()) as channel:
                try:
                    declared = await channel.declare_queue(meta_queue(group_uuid), passive=True)
                except ChannelNotFoundEntity:
                    return None
                count = declared.declaration_result.message_count or 0
                bodies = await peek(channel, declared.name, count + 1)
            for body in reversed(bodies):
                with contextlib.suppress(ValidationError, ValueError):
                    return GroupMeta.from_json(body)
            # Empty: another reader holds the message for a moment, or it expired.
            await asyncio.sleep(0.05 * (attempt + 1))
        return None

    # -- completion ----------------------------------------------------------------

    async def completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when the group queue holds ``group_task_count`` final states, or may.

        The count is exact unless a chord trigger holds the lock; then this
        says True and :meth:`trigger` decides.
        """
        if len(self._sizes) > MAX_REMEMBERED:
            self._sizes.clear()
        self._sizes[group_uuid] = group_task_count
        return await retry_transient(
            lambda: self._completed_once(group_uuid, group_task_count), f"checking group {group_uuid}"
        )

    async def _completed_once(self, group_uuid: str, group_task_count: int) -> bool:
        # The lock first, then the count: a trigger that takes the lock after this check
        # sees this member's state (published before), so no completion goes unnoticed.
        if await self._lock_held(group_uuid):
            return True
        channel = await self.backend.read_channel()
        queue = await self.backend.declare_result_queue(channel, group_uuid)
        return (queue.declaration_result.message_count or 0) >= group_task_count

    async def _lock_held(self, group_uuid: str) -> bool:
        async with scratch_channel(await self.backend.connection()) as channel:
            try:
                await channel.declare_queue(lock_queue(group_uuid), passive=True)
            except ChannelNotFoundEntity:
                return False
            except ChannelLockedResource:
                return True
        return True

    # -- the trigger -------------------------------------------------------------------

    async def trigger(self, group_uuid: str) -> bool:
        """Under the group's lock: if every member's final state is there, take them all.

        True for exactly one caller among Python workers sharing this RabbitMQ;
        the states it took are what :meth:`states` returns next.
        """
        size = self._sizes.get(group_uuid)
        meta = await self.meta(group_uuid)
        if meta is not None:
            size = len(meta.task_uuids)
        if size is None:
            raise LookupError(f"group {group_uuid}: size unknown (call group_completed first)")
        local, users = self._locks.get(group_uuid, (asyncio.Lock(), 0))
        self._locks[group_uuid] = (local, users + 1)
        try:
            # The lock queue is exclusive per connection, so coroutines of this process
            # take turns on an asyncio lock first.
            async with local, self._lock(group_uuid) as channel:
                if channel is None:
                    logger.error(
                        "chord of group %s: could not take its lock within %g s; not triggering it here",
                        group_uuid,
                        LOCK_WAIT,
                    )
                    return False
                fired = await self._take_if_complete(channel, group_uuid, size, meta)
        finally:
            local, users = self._locks[group_uuid]
            if users <= 1:
                del self._locks[group_uuid]
            else:
                self._locks[group_uuid] = (local, users - 1)
        if fired and meta is not None:
            await self._mark_triggered(meta)
        return fired

    async def _take_if_complete(
        self, channel: AbstractChannel, group_uuid: str, size: int, meta: GroupMeta | None
    ) -> bool:
        backend = self.backend
        queue = await backend.declare_result_queue(channel, group_uuid)
        held: list[AbstractIncomingMessage] = []
        states: dict[str, TaskState] = {}
        while len(held) < MAX_READ:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
            state = decode_state(message.body, group_uuid)
            if state is not None and state.task_uuid:
                states[state.task_uuid] = state  # a member that ran twice counts once
        members = set(meta.task_uuids) if meta is not None else set(states)
        complete = len(states) >= size and members <= set(states)
        for message in held:
            if complete:
                await message.ack()
            else:
                await message.nack(requeue=True)
        # A round trip to the group queue on this channel: it has taken the acks or nacks
        # above before the lock is released, so the next holder sees them.
        await backend.declare_result_queue(channel, group_uuid)
        if complete:
            self._fired[group_uuid] = list(states.values())
            self._sizes.pop(group_uuid, None)
        return complete

    @contextlib.asynccontextmanager
    async def _lock(self, group_uuid: str) -> AsyncIterator[AbstractChannel | None]:
        """Hold the group's exclusive lock queue; yields its channel (None if not had in time)."""
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.02
        connection = await self.backend.connection()
        while True:
            async with scratch_channel(connection) as channel:
                try:
                    lock = await channel.declare_queue(lock_queue(group_uuid), exclusive=True)
                except ChannelLockedResource:
                    pass
                else:
                    try:
                        yield channel
                    finally:
                        try:
                            await lock.delete(if_unused=False, if_empty=False)
                        except Exception:
                            await self.backend.delete_queues(lock_queue(group_uuid))
                    return
            if time.monotonic() + pause > deadline:
                yield None
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _mark_triggered(self, meta: GroupMeta) -> None:
        """Replace the stored GroupMeta by one with ChordTriggered set (best effort)."""
        meta.chord_triggered = True
        name = meta_queue(meta.group_uuid)
        try:
            async with scratch_channel(await self.backend.connection()) as channel:
                queue = await channel.get_queue(name, ensure=False)
                old = await queue.get(no_ack=False, fail=False)
                await self.backend.store(name, meta.to_json())
                if old is not None:
                    await old.ack()
        except Exception as exc:
            logger.warning("could not mark the chord of group %s as triggered: %s", meta.group_uuid, exc)

    async def states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """The members' final states in group order (completion order for groups sent by Go)."""
        states = self._fired.pop(group_uuid, None)
        if states is None:
            async with scratch_channel(await self.backend.connection()) as channel:
                try:
                    declared = await channel.declare_queue(group_uuid, passive=True)
                except ChannelNotFoundEntity:
                    raise LookupError(f"group {group_uuid} has no completed members") from None
                count = declared.declaration_result.message_count or 0
                bodies = await peek(channel, group_uuid, count)
            decoded = (decode_state(b, group_uuid) for b in bodies)
            states = list({s.task_uuid: s for s in decoded if s is not None}.values())
        meta = await self.meta(group_uuid)
        if meta is None:
            if len(states) < group_task_count:
                raise LookupError(
                    f"group {group_uuid}: {len(states)} of {group_task_count} members have a final state"
                )
            return states
        found = {s.task_uuid: s for s in states}
        missing = [u for u in meta.task_uuids if u not in found]
        if missing:
            raise LookupError(f"group {group_uuid}: no final state for {', '.join(missing)}")
        return [found[u] for u in meta.task_uuids]
