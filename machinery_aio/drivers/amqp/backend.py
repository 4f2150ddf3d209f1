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

Groups and chords (fired exactly once among Python workers) are in
``groups.py``. Go's documentation advises against this backend
at scale; see docs/amqp.md for the costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as _uuid
from collections.abc import Sequence
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)
from aiormq.exceptions import ChannelPreconditionFailed, PublishError

from ...config import Config, ConfigError
from ...signature import Signature
from ...state import GroupMeta, State, TaskState
from ..backend import ResultBackend, keep_origin
from ..control import ControlChannel
from .connection import (
    FailoverConnection,
    connect,
    connection_name,
    is_live,
    open_channel,
    retry_transient,
    scratch_channel,
)
from .groups import AMQPGroups, decode_state

__all__ = ["AMQPBackend"]

MAX_TTL_MS = 2**31 - 1
"""Go sends the TTLs as int32; longer expiries are capped here (about 24.8 days)."""
FALLBACK_CHECK = 2.0
"""Seconds between re-reads while waiting, in case a pushed state was missed (reconnects)."""
MAX_READ = 1000
"""At most this many state messages are read from one task's queue."""
MAX_REMEMBERED = 10_000
"""Result queues remembered as bound (each is bound again once after this many)."""


class AMQPBackend(ResultBackend):
    """Result backend compatible with Go Machinery's AMQP backend."""

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
        self.groups = AMQPGroups(self)
        self._control: ControlChannel | None = None

    def control_channel(self) -> ControlChannel:
        """Revocations through a fanout exchange into a stream (``control.py``)."""
        if self._control is None:
            from .control import AMQPControl

            self._control = AMQPControl(self)
        return self._control

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
            self._publisher = await open_channel(connection, publisher_confirms=True, on_return_raises=True)
            self._exchange = None
        return self._publisher

    async def read_channel(self) -> AbstractRobustChannel:
        if self._reader is None or self._reader.is_closed:
            connection = await self.connection()
            self._reader = await open_channel(connection, publisher_confirms=False)
        return self._reader

    async def exchange(self) -> AbstractExchange:
        if self._exchange is None:
            channel = await self._publish_channel()
            amqp = self.config.amqp
            try:
                self._exchange = await channel.declare_exchange(
                    amqp.exchange, amqp.exchange_type, durable=True
                )
            except ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"RabbitMQ refused to declare exchange {amqp.exchange!r} as a durable "
                    f"{amqp.exchange_type} exchange: {exc}"
                ) from None
        return self._exchange

    # -- writing ---------------------------------------------------------------------

    async def declare_result_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """Declare a task's or group's result queue as Go does; its message count is current."""
        arguments = self.queue_arguments()
        try:
            if isinstance(channel, AbstractRobustChannel):
                # Not robust: aio-pika would otherwise keep every result queue to restore.
                return await channel.declare_queue(
                    name, durable=False, auto_delete=True, arguments=arguments, robust=False
                )
            return await channel.declare_queue(name, durable=False, auto_delete=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ refused to declare result queue {name!r}: {exc}; it was declared "
                f"with another results_expire_in (every process must use the same)"
            ) from None

    async def store(self, name: str, body: bytes) -> None:
        """Declare the result queue ``name`` (renewing its expiry, as Go) and publish ``body`` to it."""
        await retry_transient(lambda: self._store_once(name, body), f"storing a state in {name!r}")

    async def _store_once(self, name: str, body: bytes) -> None:
        exchange = await self.exchange()
        message = Message(body, content_type="application/json", delivery_mode=DeliveryMode.PERSISTENT)
        if len(self._bound) > MAX_REMEMBERED:
            self._bound.clear()
        for attempt in (1, 2):
            channel = await self.read_channel()
            queue = await self.declare_result_queue(channel, name)
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

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """Publish each state to its task's queue; one task's in order, tasks side by side.
        (``task_name`` and ``created_at`` are carried over when the state is read.)"""
        by_task: dict[str, list[TaskState]] = {}
        for state in states:
            by_task.setdefault(state.task_uuid, []).append(state)

        async def in_order(task_states: list[TaskState]) -> None:
            for state in task_states:
                await self._store_state(state)

        await asyncio.gather(*(in_order(s) for s in by_task.values()))

    async def _store_state(self, state: TaskState) -> bytes:
        body = state.to_json()
        await self.store(state.task_uuid, body)
        if state.is_completed():
            self._wake(state)
        return body

    async def set_final_state(self, signature: Signature, state: TaskState) -> None:
        """Store the state and, for a group member, publish it to the group's queue too."""
        await self.groups.member_done(signature, await self._store_state(state))

    # -- reading ---------------------------------------------------------------------

    async def get_state(self, task_uuid: str) -> TaskState | None:
        return await retry_transient(
            lambda: self._get_state_once(task_uuid), f"reading the state of {task_uuid}"
        )

    async def _get_state_once(self, task_uuid: str) -> TaskState | None:
        channel = await self.read_channel()
        queue = await self.declare_result_queue(channel, task_uuid)
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
            state = decode_state(latest.body, task_uuid)
            if state is not None and first is not latest:
                state = keep_origin(state, decode_state(first.body, task_uuid))
            return state
        finally:
            for message in held:
                if not message.processed and is_live(message):
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)

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

    async def _watch(
        self, task_uuid: str, old: asyncio.Future[TaskState] | None
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
                channel = await self.read_channel()
                await self.exchange()
                queue = await channel.declare_queue(
                    f"machinery_aio.waiter.{_uuid.uuid4().hex}", exclusive=True, auto_delete=True
                )
                await queue.consume(self._on_pushed, no_ack=True)
                self._notify = queue
            return self._notify

    async def _on_pushed(self, message: AbstractIncomingMessage) -> None:
        state = decode_state(message.body, message.routing_key or "")
        if state is not None and state.is_completed():
            self._wake(state)

    def _wake(self, state: TaskState) -> None:
        for future in self._waiters.get(state.task_uuid, ()):
            if not future.done():
                future.set_result(state)

    # -- groups and chords (groups.py) ----------------------------------

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        await self.groups.init(group_uuid, task_uuids)

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        return await self.groups.meta(group_uuid)

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        return await self.groups.completed(group_uuid, group_task_count)

    async def trigger_chord(self, group_uuid: str) -> bool:
        return await self.groups.trigger(group_uuid)

    async def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        return await self.groups.states(group_uuid, group_task_count)

    # -- cleanup -----------------------------------------------------------------------

    async def delete_queues(self, *names: str) -> None:
        async with scratch_channel(await self.connection()) as channel:
            for name in names:
                await channel.queue_delete(name)
                self._bound.pop(name, None)


_RECHECK: Any = TaskState(task_uuid="", state=State.PENDING)
"""Resolves a waiter's future when it should read the state again (after a reconnect)."""
