"""The AMQP result backend (``amqp://``, ``amqps://``): task states as messages, Go's layout.

Go Machinery keeps results in RabbitMQ as follows, and so does this backend:

* every task has a queue named after its UUID (not durable, auto-delete,
  ``x-message-ttl`` and ``x-expires`` = ``results_expire_in`` in ms) bound to
  the exchange with its UUID, and every state change publishes one more
  persistent TaskState message to it;
* when a member of a group finishes, its final state is also published to a
  queue named after the group UUID.

Reading is where RabbitMQ differs from a key-value store. Go's reader takes
(consumes) the oldest state; here :meth:`get_state` takes every state with
``basic.get``, acks the superseded ones in the middle and puts back the first
(for ``created_at``) and the latest, so reads do not lose the result.
Waiting does not poll: a waiter binds its own exclusive queue to the task's
routing key and RabbitMQ pushes it a copy of every new state.

Chords fire exactly once among Python workers: the group's final states are
read and acked under a lock that is an exclusive queue (RabbitMQ gives an
exclusive queue to one connection only, and drops it with the connection).
Go's own check (``<group>_chord_triggered`` never exists, so it always
passes) is not used. Go's documentation advises against this backend at
scale; see docs/amqp.md for the costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as _uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)
from aiormq.exceptions import (
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    PublishError,
)
from pydantic import ValidationError

from ..amqpconn import FailoverConnection, connect, connection_name, is_live, retry_transient, scratch_channel
from ..config import Config, ConfigError
from ..gotime import ZERO_TIME, now
from ..log import get_logger
from ..signature import Signature
from ..state import GroupMeta, State, TaskResult, TaskState
from .base import ResultBackend

__all__ = ["AMQPBackend"]

logger = get_logger("machinery_aio.amqp")

MAX_TTL_MS = 2**31 - 1
"""Go sends the TTLs as int32; longer expiries are capped here (about 24.8 days)."""
FALLBACK_CHECK = 2.0
"""Seconds between re-reads while waiting, in case a pushed state was missed (reconnects)."""
LOCK_WAIT = 30.0
"""Seconds a chord trigger waits for another worker's group lock before giving up."""
MAX_READ = 1000
"""At most this many state messages are read from one task's queue."""
MAX_REMEMBERED = 10_000
"""Result queues remembered as bound (each is bound again once after this many)."""


def meta_queue(group_uuid: str) -> str:
    """Where the GroupMeta of a group sent from Python is kept (Go's AMQP backend keeps none)."""
    return f"{group_uuid}_meta"


def lock_queue(group_uuid: str) -> str:
    return f"{group_uuid}_chord_lock"


class AMQPBackend(ResultBackend):
    """Result backend compatible with Go Machinery's AMQP backend."""

    scheme = "amqp"

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self._connection: FailoverConnection | None = None
        self._connecting = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._reader: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._bound: dict[str, float] = {}  # queue -> when it was declared and bound
        self._waiters: dict[str, set[asyncio.Future[TaskState]]] = {}
        self._notify: AbstractQueue | None = None
        self._notify_lock = asyncio.Lock()
        self._group_sizes: dict[str, int] = {}
        self._fired: dict[str, list[TaskState]] = {}
        self._group_locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it

    # -- connection ----------------------------------------------------------------

    @property
    def ttl_ms(self) -> int:
        return min(self.expires_in * 1000, MAX_TTL_MS)

    def queue_arguments(self) -> dict[str, Any]:
        """Go's arguments for result queues: messages and the idle queue expire together."""
        return {"x-message-ttl": self.ttl_ms, "x-expires": self.ttl_ms}

    async def connect(self) -> None:
        await self.connection()

    async def connection(self) -> FailoverConnection:
        if self._connection is not None and not self._connection.is_closed:
            return self._connection
        async with self._connecting:
            if self._connection is None or self._connection.is_closed:
                connection = await connect(self.config, [self.url], connection_name("results"))
                connection.reconnect_callbacks.add(self._on_reconnect)
                self._connection = connection
                self._publisher = self._reader = None
                self._exchange = None
                self._notify = None
                self._bound.clear()
        return self._connection

    def _on_reconnect(self, *_: Any) -> None:
        self._bound.clear()
        # States published while the connection was down were not pushed: look again.
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(_RECHECK)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._publisher = self._reader = None
        self._exchange = None
        self._notify = None
        if connection is not None:
            await connection.close()

    async def _publish_channel(self) -> AbstractRobustChannel:
        if self._publisher is None or self._publisher.is_closed:
            connection = await self.connection()
            self._publisher = await connection.channel(publisher_confirms=True,
                                                       on_return_raises=True)
            self._exchange = None
        return self._publisher

    async def _read_channel(self) -> AbstractRobustChannel:
        if self._reader is None or self._reader.is_closed:
            connection = await self.connection()
            self._reader = await connection.channel(publisher_confirms=False)
        return self._reader

    async def exchange(self) -> AbstractExchange:
        if self._exchange is None:
            channel = await self._publish_channel()
            amqp = self.config.amqp
            try:
                self._exchange = await channel.declare_exchange(
                    amqp.exchange, amqp.exchange_type, durable=True)
            except ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"RabbitMQ refused to declare exchange {amqp.exchange!r} as a durable "
                    f"{amqp.exchange_type} exchange: {exc}"
                ) from None
        return self._exchange

    # -- writing ---------------------------------------------------------------------

    async def _declare(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        arguments = self.queue_arguments()
        try:
            if isinstance(channel, AbstractRobustChannel):
                # Not robust: aio-pika would otherwise keep every result queue to restore.
                return await channel.declare_queue(name, durable=False, auto_delete=True,
                                                   arguments=arguments, robust=False)
            return await channel.declare_queue(name, durable=False, auto_delete=True,
                                               arguments=arguments)
        except ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ refused to declare result queue {name!r}: {exc}; it was declared "
                f"with another results_expire_in (every process must use the same)"
            ) from None

    async def _store(self, name: str, body: bytes) -> None:
        """Declare the result queue ``name`` (renewing its expiry, as Go) and publish ``body`` to it."""
        await retry_transient(lambda: self._store_once(name, body), f"storing a state in {name!r}")

    async def _store_once(self, name: str, body: bytes) -> None:
        exchange = await self.exchange()
        message = Message(body, content_type="application/json",
                          delivery_mode=DeliveryMode.PERSISTENT)
        if len(self._bound) > MAX_REMEMBERED:
            self._bound.clear()
        for attempt in (1, 2):
            channel = await self._read_channel()
            queue = await self._declare(channel, name)
            bound = self._bound.get(name)
            if bound is None or time.monotonic() - bound > self.expires_in / 2:
                await queue.bind(exchange.name, name)
                self._bound[name] = time.monotonic()
            try:
                await exchange.publish(message, name, mandatory=True)
                return
            except PublishError:
                # The queue was deleted (purged or expired) since it was bound here.
                self._bound.pop(name, None)
                if attempt == 2:
                    raise

    async def set_state(self, state: TaskState) -> None:
        await self._store(state.task_uuid, state.to_json())
        if state.is_completed():
            self._wake(state)

    async def set_state_success(self, signature: Signature, results: list[TaskResult]) -> None:
        state = TaskState.new(signature, State.SUCCESS, results=results)
        await self.set_state(state)
        await self._mark_completed(signature, state)

    async def set_state_failure(self, signature: Signature, error: str) -> None:
        state = TaskState.new(signature, State.FAILURE, error=error)
        await self.set_state(state)
        await self._mark_completed(signature, state)

    async def _mark_completed(self, signature: Signature, state: TaskState) -> None:
        """Go's ``markTaskCompleted``: a group member's final state also goes to the group's queue."""
        if signature.group_uuid and signature.group_task_count:
            await self._store(signature.group_uuid, state.to_json())

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid=group_uuid, task_uuids=list(task_uuids), created_at=now())
        await self._store(meta_queue(group_uuid), meta.to_json())

    # -- reading ---------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        return await retry_transient(lambda: self._get_state_once(task_uuid),
                                     f"reading the state of {task_uuid}")

    async def _get_state_once(self, task_uuid: str) -> TaskState | None:
        channel = await self._read_channel()
        queue = await self._declare(channel, task_uuid)
        held: list[AbstractIncomingMessage] = []
        try:
            while len(held) < MAX_READ:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                held.append(message)
            if not held:
                return None
            first, latest = held[0], held[-1]
            for message in held[1:-1]:  # superseded states: keep the queue short
                await message.ack()
            state = _decode_state(latest.body, task_uuid)
            if state is not None and state.created_at == ZERO_TIME and first is not latest:
                pending = _decode_state(first.body, task_uuid)
                if pending is not None:
                    state.created_at = pending.created_at
                    state.task_name = state.task_name or pending.task_name
            return state
        finally:
            for message in held:
                if not message.processed and is_live(message):
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        for attempt in range(5):
            async with scratch_channel(await self.connection()) as channel:
                try:
                    queue = await channel.declare_queue(meta_queue(group_uuid), passive=True)
                except ChannelNotFoundEntity:
                    return None
                bodies = await _peek_all(queue)
            for body in reversed(bodies):
                with contextlib.suppress(ValidationError, ValueError):
                    return GroupMeta.from_json(body)
            # Empty: another reader holds the message for a moment, or it expired.
            await asyncio.sleep(0.05 * (attempt + 1))
        return None

    # -- waiting -----------------------------------------------------------------------

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        deadline = None if timeout is None else time.monotonic() + timeout
        pushed = self.config.amqp.exchange_type in ("direct", "topic")
        check_every = FALLBACK_CHECK if pushed else max(interval, 0.01)
        future: asyncio.Future[TaskState] | None = None
        try:
            while True:
                if pushed and (future is None or future.done()):
                    future = await self._watch(task_uuid, future)
                state = await self.get_state(task_uuid)
                if state is not None and state.is_completed():
                    return state
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
                wait = check_every if left is None else min(check_every, left)
                if future is None:
                    await asyncio.sleep(wait)
                    continue
                with contextlib.suppress(TimeoutError):
                    pushed_state = await asyncio.wait_for(asyncio.shield(future), wait)
                    if pushed_state is not _RECHECK:
                        return pushed_state
        finally:
            if future is not None:
                await self._unwatch(task_uuid, future)

    async def _watch(self, task_uuid: str, old: asyncio.Future[TaskState] | None
                     ) -> asyncio.Future[TaskState]:
        """Have RabbitMQ push this process a copy of the task's states."""
        if old is not None:
            await self._unwatch(task_uuid, old)
        future: asyncio.Future[TaskState] = asyncio.get_running_loop().create_future()
        futures = self._waiters.setdefault(task_uuid, set())
        futures.add(future)
        if len(futures) == 1:
            queue = await self._notify_queue()
            await queue.bind(self.config.amqp.exchange, task_uuid)
        return future

    async def _unwatch(self, task_uuid: str, future: asyncio.Future[TaskState]) -> None:
        futures = self._waiters.get(task_uuid)
        if futures is None:
            return
        futures.discard(future)
        if not futures:
            del self._waiters[task_uuid]
            queue = self._notify
            if queue is not None:
                with contextlib.suppress(Exception):
                    await queue.unbind(self.config.amqp.exchange, task_uuid)

    async def _notify_queue(self) -> AbstractQueue:
        async with self._notify_lock:
            if self._notify is None:
                channel = await self._read_channel()
                await self.exchange()
                queue = await channel.declare_queue(
                    f"machinery_aio.waiter.{_uuid.uuid4().hex}", exclusive=True, auto_delete=True)
                await queue.consume(self._on_pushed, no_ack=True)
                self._notify = queue
            return self._notify

    async def _on_pushed(self, message: AbstractIncomingMessage) -> None:
        state = _decode_state(message.body, message.routing_key or "")
        if state is not None and state.is_completed():
            self._wake(state)

    def _wake(self, state: TaskState) -> None:
        for future in self._waiters.get(state.task_uuid, ()):
            if not future.done():
                future.set_result(state)

    # -- groups and chords ----------------------------------------------------------------

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when the group's queue holds ``group_task_count`` final states, or may.

        The count is exact unless a chord trigger is reading the queue right
        now; then this says True and :meth:`trigger_chord` decides.
        """
        if len(self._group_sizes) > MAX_REMEMBERED:
            self._group_sizes.clear()
        self._group_sizes[group_uuid] = group_task_count
        return await retry_transient(lambda: self._group_completed_once(group_uuid, group_task_count),
                                     f"checking group {group_uuid}")

    async def _group_completed_once(self, group_uuid: str, group_task_count: int) -> bool:
        # The lock first, then the count: a trigger that takes the lock after this check
        # sees this member's state (published before), so no completion goes unnoticed.
        if await self._lock_held(group_uuid):
            return True
        channel = await self._read_channel()
        queue = await self._declare(channel, group_uuid)
        count = queue.declaration_result.message_count or 0
        return count >= group_task_count

    async def _lock_held(self, group_uuid: str) -> bool:
        async with scratch_channel(await self.connection()) as channel:
            try:
                await channel.declare_queue(lock_queue(group_uuid), passive=True)
            except ChannelNotFoundEntity:
                return False
            except ChannelLockedResource:
                return True
        return True

    async def trigger_chord(self, group_uuid: str) -> bool:
        """Under the group's lock: if every member's final state is there, take them all.

        True for exactly one caller among Python workers sharing this
        RabbitMQ; the states it took are what :meth:`group_task_states` returns.
        """
        size = self._group_sizes.get(group_uuid)
        meta = await self.get_group_meta(group_uuid)
        if meta is not None:
            size = len(meta.task_uuids)
        if size is None:
            raise LookupError(f"group {group_uuid}: size unknown (call group_completed first)")
        local, users = self._group_locks.get(group_uuid, (asyncio.Lock(), 0))
        self._group_locks[group_uuid] = (local, users + 1)
        try:
            # The lock queue is exclusive per connection, so coroutines of this process
            # take turns on an asyncio lock first.
            async with local, self._group_lock(group_uuid) as channel:
                if channel is None:
                    logger.error("chord of group %s: could not take its lock within %g s; "
                                 "not triggering it here", group_uuid, LOCK_WAIT)
                    return False
                queue = await self._declare(channel, group_uuid)
                held: list[AbstractIncomingMessage] = []
                states: dict[str, TaskState] = {}
                while True:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    held.append(message)
                    state = _decode_state(message.body, "")
                    if state is not None and state.task_uuid:
                        states[state.task_uuid] = state
                members = set(meta.task_uuids) if meta is not None else set(states)
                if len(states) < size or not members <= set(states):
                    for message in held:
                        await message.nack(requeue=True)
                    return False
                for message in held:
                    await message.ack()
                self._fired[group_uuid] = list(states.values())
                self._group_sizes.pop(group_uuid, None)
        finally:
            local, users = self._group_locks[group_uuid]
            if users <= 1:
                del self._group_locks[group_uuid]
            else:
                self._group_locks[group_uuid] = (local, users - 1)
        if meta is not None:
            await self._mark_triggered(meta)
        return True

    @contextlib.asynccontextmanager
    async def _group_lock(self, group_uuid: str) -> AsyncIterator[AbstractChannel | None]:
        """Hold the group's exclusive lock queue; yields its channel (None if not had in time)."""
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.02
        connection = await self.connection()
        while True:
            async with scratch_channel(connection) as channel:
                try:
                    await channel.declare_queue(lock_queue(group_uuid), exclusive=True)
                except ChannelLockedResource:
                    pass
                else:
                    try:
                        yield channel
                    finally:
                        await self._delete(lock_queue(group_uuid))
                    return
            if time.monotonic() + pause > deadline:
                yield None
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _mark_triggered(self, meta: GroupMeta) -> None:
        """Replace the stored GroupMeta by one with ChordTriggered set (best effort)."""
        meta.chord_triggered = True
        with contextlib.suppress(Exception):
            async with scratch_channel(await self.connection()) as channel:
                queue = await channel.get_queue(meta_queue(meta.group_uuid), ensure=False)
                old = await queue.get(no_ack=False, fail=False)
                await self._store(meta_queue(meta.group_uuid), meta.to_json())
                if old is not None:
                    await old.ack()

    async def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """The members' final states in group order (completion order for groups sent by Go)."""
        states = self._fired.pop(group_uuid, None)
        if states is None:
            async with scratch_channel(await self.connection()) as channel:
                try:
                    queue = await channel.declare_queue(group_uuid, passive=True)
                except ChannelNotFoundEntity:
                    raise LookupError(f"group {group_uuid} has no completed members") from None
                bodies = await _peek_all(queue)
            by_uuid = {s.task_uuid: s for s in filter(None, (_decode_state(b, "") for b in bodies))}
            states = list(by_uuid.values())
        meta = await self.get_group_meta(group_uuid)
        if meta is None:
            if len(states) < group_task_count:
                raise LookupError(f"group {group_uuid}: {len(states)} of {group_task_count} "
                                  f"members have a final state")
            return states
        found = {s.task_uuid: s for s in states}
        missing = [u for u in meta.task_uuids if u not in found]
        if missing:
            raise LookupError(f"group {group_uuid}: no final state for {', '.join(missing)}")
        return [found[u] for u in meta.task_uuids]

    # -- cleanup -----------------------------------------------------------------------

    async def _delete(self, *names: str) -> None:
        async with scratch_channel(await self.connection()) as channel:
            for name in names:
                await channel.queue_delete(name)
                self._bound.pop(name, None)

    async def purge_state(self, task_uuid: str) -> None:
        await self._delete(task_uuid)

    async def purge_group_meta(self, group_uuid: str) -> None:
        await self._delete(group_uuid, meta_queue(group_uuid), f"{group_uuid}_chord_triggered")


_RECHECK: Any = TaskState(task_uuid="", state=State.PENDING)
"""Resolves a waiter's future when it should read the state again (after a reconnect)."""


def _decode_state(body: bytes, task_uuid: str) -> TaskState | None:
    try:
        return TaskState.from_json(body)
    except (ValidationError, ValueError):
        logger.error("result queue %r holds a message that is not a TaskState: %r",
                     task_uuid, body[:200])
        return None


async def _peek_all(queue: AbstractQueue) -> list[bytes]:
    held: list[AbstractIncomingMessage] = []
    try:
        while len(held) < MAX_READ:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
        return [m.body for m in held]
    finally:
        for message in held:
            if is_live(message):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
