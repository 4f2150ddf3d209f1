"""The RabbitMQ broker (``amqp://``, ``amqps://``), on aio-pika, in Go Machinery's layout.

Go and Python workers can share one RabbitMQ: the exchange, queues, delay
queues and message properties are those Go Machinery v2 declares and sends
(see ``layout.py`` and docs/amqp.md). Publishing waits for the
broker's confirm; consumers ack only after the task's final state is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
)
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed, PublishError

from ... import gotime
from ...config import AMQPConfig, Config, ConfigError
from ...log import get_logger
from ...signature import InvalidMessageError, Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter
from ..registry import WorkerRegistry
from . import layout, workers
from .connection import (
    FailoverConnection,
    connect,
    connection_name,
    held_messages,
    open_channel,
    peek,
    retry_transient,
    scratch_channel,
)

__all__ = ["AMQPBroker"]

logger = get_logger("machinery_aio.amqp")

PUBLISH_CONCURRENCY = 100
"""Publishes in flight at once in :meth:`AMQPBroker.publish_many` (confirms are pipelined)."""
MAX_REMEMBERED = 10_000
"""Declared queues remembered per process before the memory is cleared."""


class AMQPBroker(Broker, WorkerRegistry):
    """RabbitMQ broker compatible with Go Machinery's AMQP broker.

    Args:
        exact_delays: give every distinct delay its own queue, to the
            millisecond, as Go does, instead of rounding delays to two
            significant digits (which bounds the number of delay queues;
            delays of 100 s or more are rounded down, and a Python worker puts
            a task that comes out early back for the rest of its delay, but a
            Go worker would run it up to 10 % early).
    """

    capabilities = BrokerCapabilities(priority=True, list_delayed=False, edit_dead_letters=True)

    def __init__(self, config: Config, url: str | None = None, *, exact_delays: bool = False) -> None:
        super().__init__(config, url)
        urls = config.broker_urls()
        self.urls = urls if url is None or url in urls else [url]
        self.exact_delays = exact_delays
        self._connection: FailoverConnection | None = None
        self._connecting = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._declarer: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._declared: dict[tuple[str, str], float] = {}  # (queue, binding key) -> when
        self._declaring: dict[tuple[str, str], asyncio.Lock] = {}
        self._worker_ttls: dict[str, float] = {}  # worker key -> its record's lifetime (s)

    @property
    def amqp(self) -> AMQPConfig:
        return self.config.amqp

    # -- connection --------------------------------------------------------------

    async def connect(self) -> None:
        await self.connection()

    async def connection(self) -> FailoverConnection:
        """The robust connection, opened on first use."""
        if self._connection is not None and not self._connection.is_closed:
            return self._connection
        async with self._connecting:
            if self._connection is None or self._connection.is_closed:
                connection = await connect(self.config, self.urls, connection_name("broker"))
                connection.reconnect_callbacks.add(self._forget_declarations)
                self._connection = connection
                self._publisher = None
                self._declarer = None
                self._exchanges.clear()
                self._declared.clear()
        return self._connection

    def _forget_declarations(self, *_: Any) -> None:
        # A restarted RabbitMQ may have lost queues (delay queues expire anyway): declare again.
        self._declared.clear()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._publisher = self._declarer = None
        self._exchanges.clear()
        self._declared.clear()
        if connection is not None:
            await connection.close()

    async def _publish_channel(self) -> AbstractRobustChannel:
        if self._publisher is None or self._publisher.is_closed:
            connection = await self.connection()
            self._publisher = await open_channel(connection, publisher_confirms=True, on_return_raises=True)
            self._exchanges.clear()
        assert self._publisher is not None
        return self._publisher

    async def _declare_channel(self) -> AbstractRobustChannel:
        if self._declarer is None or self._declarer.is_closed:
            connection = await self.connection()
            self._declarer = await open_channel(connection, publisher_confirms=False)
        assert self._declarer is not None
        return self._declarer

    async def exchange(self, name: str | None = None) -> AbstractExchange:
        """An exchange on the publishing channel, declared durable on first use."""
        name = self.amqp.exchange if name is None else name
        found = self._exchanges.get(name)
        if found is not None:
            return found
        channel = await self._publish_channel()
        kind = self.amqp.exchange_type if name == self.amqp.exchange else ExchangeType.DIRECT
        try:
            exchange = await channel.declare_exchange(name, kind, durable=True)
        except ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"RabbitMQ refused to declare exchange {name!r} as a durable {kind} exchange: {exc}; "
                f"it exists with other settings (set amqp.exchange_type to match)"
            ) from None
        self._exchanges[name] = exchange
        return exchange

    # -- declarations ------------------------------------------------------------

    async def declare_queue(
        self,
        name: str,
        binding_keys: Sequence[str],
        *,
        arguments: dict[str, Any] | None = None,
        auto_delete: bool = False,
        max_age: float | None = None,
        exchange: str | None = None,
    ) -> None:
        """Declare a durable queue bound to the exchange, once per process (or every ``max_age`` s)."""
        exchange = self.amqp.exchange if exchange is None else exchange
        key = (name, "\x00".join(binding_keys) + "@" + exchange)
        when = self._declared.get(key)
        if when is not None and (max_age is None or time.monotonic() - when < max_age):
            return
        if len(self._declared) > MAX_REMEMBERED:  # many exact delays: forget, declare again
            self._declared.clear()
            self._declaring.clear()
        lock = self._declaring.setdefault(key, asyncio.Lock())
        async with lock:
            when = self._declared.get(key)
            if when is not None and (max_age is None or time.monotonic() - when < max_age):
                return
            await self.exchange(exchange)
            channel = await self._declare_channel()
            args = self.amqp.queue_declare_args if arguments is None else arguments
            try:
                queue = await channel.declare_queue(
                    name,
                    durable=True,
                    auto_delete=auto_delete,
                    arguments=args or None,
                    robust=False,
                )
                for binding_key in binding_keys:
                    await queue.bind(
                        exchange, binding_key, arguments=self.amqp.queue_binding_args or None, robust=False
                    )
            except ChannelPreconditionFailed as exc:
                raise ConfigError(
                    f"RabbitMQ refused to declare queue {name!r} with arguments {args}: {exc}; "
                    f"it exists with other arguments (make amqp.queue_declare_args match, "
                    f"or delete the queue)"
                ) from None
            self._declared[key] = time.monotonic()

    # -- publishing ----------------------------------------------------------------

    def default_routing_key(self) -> str:
        return layout.default_routing_key(self.amqp, self.config.default_queue)

    async def publish(self, signature: Signature) -> None:
        self.adjust_routing_key(signature)
        signature.headers = layout.amqp_headers(signature.headers)
        body = signature.to_json()
        delay_ms = 0
        if signature.eta is not None:
            delay_ms = int((signature.eta - gotime.now()) / timedelta(milliseconds=1))
        if delay_ms > 0:
            await self._publish_delayed(signature, body, delay_ms)
        else:
            await self._publish_now(signature, body)

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(signature: Signature) -> None:
            async with limit:
                await self.publish(signature)

        await asyncio.gather(*(one(s) for s in signatures))

    def _message(self, signature: Signature, body: bytes, **extra: Any) -> Message:
        return Message(
            body,
            headers=signature.headers or {},
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=signature.priority,
            **extra,
        )

    async def _publish_now(self, signature: Signature, body: bytes) -> None:
        target = layout.route(self.amqp, self.config.default_queue, signature.routing_key)

        async def declare() -> None:
            await self.declare_queue(target.queue, [target.binding_key])

        await self._send(self.amqp.exchange, target.routing_key, self._message(signature, body), declare)

    async def _publish_delayed(self, signature: Signature, body: bytes, delay_ms: int) -> None:
        routing_key = signature.routing_key
        target = layout.route(self.amqp, self.config.default_queue, routing_key)
        if self.amqp.delayed_queue:
            name, arguments = layout.delayed_queue(self.amqp, routing_key, self.default_routing_key())
            message = self._message(signature, body, expiration=timedelta(milliseconds=delay_ms))
            max_age: float | None = None
        else:
            ms = delay_ms if self.exact_delays else layout.delay_bucket(delay_ms)
            name, arguments = layout.delay_queue(self.amqp, ms, routing_key)
            message = self._message(signature, body)
            # x-expires (2 x ms) runs from the last declare, not the last publish: declare again
            # before half of it is gone, so a queue never expires with a message still inside.
            max_age = ms / 2000

        async def declare() -> None:
            await self.declare_queue(target.queue, [target.binding_key])
            await self.declare_queue(
                name, [name], arguments=arguments, auto_delete=self.amqp.auto_delete, max_age=max_age
            )

        await self._send(self.amqp.exchange, name, message, declare)

    async def _send(
        self, exchange_name: str, routing_key: str, message: Message, declare: Callable[[], Awaitable[None]]
    ) -> None:
        """Declare what the message needs, publish it and wait for the broker's confirm.

        Publishes are mandatory: if RabbitMQ cannot route the message (someone
        deleted the queue), the declarations are made again and it is sent once more.
        """

        async def attempt() -> None:
            await declare()
            exchange = await self.exchange(exchange_name)
            await exchange.publish(message, routing_key, mandatory=True)

        try:
            await retry_transient(attempt, f"publishing to {routing_key!r}")
        except PublishError:
            self._declared.clear()
            try:
                await retry_transient(attempt, f"publishing to {routing_key!r}")
            except PublishError:
                raise RuntimeError(
                    f"RabbitMQ could not route a message to {routing_key!r} on exchange "
                    f"{exchange_name!r}: no queue is bound to that routing key"
                ) from None

    # -- consuming -----------------------------------------------------------------

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        from .consumer import AMQPConsumer

        return AMQPConsumer(self, queue, prefetch=prefetch, tag=tag)

    def binding_keys(self, queue: str) -> list[str]:
        """The keys a consumer binds ``queue`` with."""
        return layout.queue_binding_key(self.amqp, queue, self.config.default_queue)

    async def return_to_queue(self, queue: str, message: AbstractIncomingMessage, delay: float = 0.0) -> None:
        """Publish a copy of ``message`` (same body and properties) at the tail of ``queue``,
        after ``delay`` s: meanwhile it waits in ``<queue>.handback``."""
        ms = int(delay * 1000)
        target = queue
        if ms > 0:
            target, arguments = layout.handback_queue(queue)
        copy = Message(
            message.body,
            headers=layout.own_headers(message.headers),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=message.priority,
            expiration=timedelta(milliseconds=ms) if ms > 0 else None,
        )

        async def attempt() -> None:
            if ms > 0:
                await self.declare_queue(target, [], arguments=arguments)
            channel = await self._publish_channel()
            await channel.default_exchange.publish(copy, target, mandatory=True)

        await retry_transient(attempt, f"returning a task to {queue!r}")

    # -- dead letters --------------------------------------------------------------

    async def publish_dead_letter(
        self, queue: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None:
        """Keep a message that cannot run in ``<queue>.dead``, with the reason in a header."""
        dead_queue = layout.dead_letter_queue(queue)
        headers = {
            **layout.own_headers(headers),
            layout.REASON_HEADER: reason,
            layout.QUEUE_HEADER: queue,
            layout.FAILED_AT_HEADER: gotime.format_time(gotime.now()),
        }
        message = Message(body, headers=headers, delivery_mode=DeliveryMode.PERSISTENT)

        async def declare() -> None:
            await self.declare_queue(dead_queue, [queue], arguments={}, exchange=layout.DEAD_LETTER_EXCHANGE)

        await self._send(layout.DEAD_LETTER_EXCHANGE, queue, message, declare)

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        queue = queue or self.config.default_queue
        async with scratch_channel(await self.connection()) as channel:
            count = await _message_count(channel, layout.dead_letter_queue(queue))
            if not count or limit == 0:
                return []
            count = count if limit is None else min(count, limit)
            async with held_messages(channel, layout.dead_letter_queue(queue), count) as held:
                letters = [_dead_letter(message, queue) for message in held]
            await _wait_requeued(channel, layout.dead_letter_queue(queue), len(held))
        return letters

    async def count_dead_letters(self, queue: str | None = None) -> int:
        dead = layout.dead_letter_queue(queue or self.config.default_queue)
        async with scratch_channel(await self.connection()) as channel:
            return await _message_count(channel, dead) or 0

    async def requeue_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        return await self._take_dead_letters(queue or self.config.default_queue, letters, requeue=True)

    async def delete_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        return await self._take_dead_letters(queue or self.config.default_queue, letters, requeue=False)

    async def _take_dead_letters(
        self, queue: str, letters: Sequence[DeadLetter] | None, *, requeue: bool
    ) -> int:
        """Take the dead letters of ``queue`` that are among ``letters`` (all if None), each
        published back to the queue first when ``requeue``; the others go back where they were."""
        wanted = None if letters is None else list(letters)
        dead = layout.dead_letter_queue(queue)
        taken = 0
        async with scratch_channel(await self.connection()) as channel:
            total = await _message_count(channel, dead)
            if not total or wanted == []:
                return 0
            source = await channel.get_queue(dead, ensure=False)
            kept: list[AbstractIncomingMessage] = []
            try:
                for _ in range(total):
                    message = await source.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    letter = _dead_letter(message, queue)
                    if wanted is not None and letter not in wanted:
                        kept.append(message)
                        continue
                    if wanted is not None:
                        wanted.remove(letter)
                    if requeue:
                        await self.return_to_queue(queue, message)
                    await message.ack()
                    taken += 1
                    if wanted == []:
                        break
            finally:
                for message in kept:
                    await message.nack(requeue=True)
            await _wait_requeued(channel, dead, len(kept))
        return taken

    # -- inspection ------------------------------------------------------------------

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks waiting in ``queue``, read with basic.get and put back (as Go does).

        Messages a worker has received but not acked are not pending and are
        not listed. Bodies that are not valid Signatures are skipped (and logged).
        """
        return await self._peek_tasks(queue or self.config.default_queue, limit)

    async def count_pending(self, queue: str | None = None) -> int:
        async with scratch_channel(await self.connection()) as channel:
            return await _message_count(channel, queue or self.config.default_queue) or 0

    async def get_held_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks handed back for later (names no worker knows), waiting in ``<queue>.handback``.
        RabbitMQ cannot list the messages workers hold unacked (running)."""
        name, _ = layout.handback_queue(queue or self.config.default_queue)
        return await self._peek_tasks(name, limit)

    async def _peek_tasks(self, queue: str, limit: int | None) -> list[Signature]:
        async with scratch_channel(await self.connection()) as channel:
            count = await _message_count(channel, queue) or 0
            if limit is not None:
                count = min(count, limit)
            bodies = await peek(channel, queue, count) if count else []
        tasks: list[Signature] = []
        for body in bodies:
            try:
                tasks.append(Signature.from_json(body))
            except InvalidMessageError as exc:
                logger.warning("queue %r holds a message that is not a task: %s", queue, exc.reason)
        return tasks

    # -- worker registry (heartbeats, see workers.py) -----------------------------------

    async def record_worker(self, key: str, data: bytes, expires_at: float) -> None:
        self._worker_ttls[key] = expires_at - time.time()
        await workers.record_worker(self, key, data, expires_at)

    async def remove_worker(self, key: str) -> None:
        await workers.remove_worker(self, key, self._worker_ttls.pop(key, workers.TOMBSTONE_TTL))

    async def list_workers(self) -> list[bytes]:
        return await workers.list_workers(self)

    async def purge(self, queue: str | None = None) -> int:
        queue = queue or self.config.default_queue
        async with scratch_channel(await self.connection()) as channel:
            if await _message_count(channel, queue) is None:
                return 0
            target = await channel.get_queue(queue, ensure=False)
            result = await target.purge()
        return int(result.message_count or 0)


async def _message_count(channel: AbstractChannel, queue: str) -> int | None:
    """Messages ready in ``queue`` (None if it does not exist); closes the channel if it does not."""
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return None
    result = declared.declaration_result
    return int(result.message_count or 0)


async def _wait_requeued(channel: AbstractChannel, queue: str, count: int, timeout: float = 5.0) -> None:
    """basic.nack has no reply: wait (briefly) until RabbitMQ shows ``count`` messages in
    ``queue`` again, so that a listing right after this one sees them all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await _message_count(channel, queue) or 0) >= count:
            return
        await asyncio.sleep(0.02)


def _dead_letter(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    headers = message.headers or {}
    return DeadLetter(
        queue=str(_header(headers, layout.QUEUE_HEADER) or queue),
        reason=str(_header(headers, layout.REASON_HEADER) or ""),
        body=message.body.decode("utf-8", "replace"),
        failed_at=str(_header(headers, layout.FAILED_AT_HEADER) or ""),
    )


def _header(headers: dict[str, Any], name: str) -> Any:
    value = headers.get(name)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
