"""A worker's consumer of one RabbitMQ queue: pushed deliveries buffered, handed out by ``fetch``.

RabbitMQ pushes at most ``prefetch`` unacked messages (the worker's
concurrency), so the buffer never holds more than the worker can start. A
delivery is acked on the channel it came on, after the worker has recorded
the task's final state. If that channel is gone (the connection dropped and
aio-pika reconnected), its delivery tags mean nothing on the new one:
RabbitMQ has already put those messages back and will deliver them again, so
they are neither acked nor run from the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from ...log import get_logger
from ..broker import Consumer, Delivery
from .connection import is_live, open_channel

if TYPE_CHECKING:
    from .broker import AMQPBroker

__all__ = ["AMQPConsumer"]

logger = get_logger("machinery_aio.amqp")

MAX_PREFETCH = 65535
"""AMQP's prefetch count is a 16-bit number."""
DEAD_LETTER_RETRY_DELAY = 5.0
"""Seconds before a message that could not be dead-lettered goes back to its queue."""
WAIT = 1.0
"""Longest a fetch waits for a pushed message before returning an empty list."""


class AMQPConsumer(Consumer):
    """Consumes ``queue`` on its own channel with ``prefetch`` unacked messages at most."""

    def __init__(self, broker: AMQPBroker, queue: str, *, prefetch: int, tag: str) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = min(max(prefetch, 1), MAX_PREFETCH)
        self.tag = tag
        self._buffer: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        self._channel: AbstractRobustChannel | None = None
        self._source: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._starting = asyncio.Lock()
        self._pausing: asyncio.Task[None] | None = None
        self._closed = False

    # -- starting and stopping the push ---------------------------------------------

    async def _start(self) -> None:
        async with self._starting:
            if self._pausing is not None:
                await self._pausing
                self._pausing = None
            if self._consumer_tag is not None or self._closed:
                return
            broker = self.broker
            if self._channel is None or self._channel.is_closed:
                await broker.declare_queue(self.queue, broker.binding_keys(self.queue))
                connection = await broker.connection()
                channel = await open_channel(connection, publisher_confirms=False)
                try:
                    await channel.set_qos(prefetch_count=self.prefetch)
                    # Declared again on this (robust) channel so aio-pika restores queue,
                    # bindings and consumer after a reconnect.
                    await channel.declare_exchange(
                        broker.amqp.exchange, broker.amqp.exchange_type, durable=True
                    )
                    source = await channel.declare_queue(
                        self.queue, durable=True, arguments=broker.amqp.queue_declare_args or None
                    )
                    for key in broker.binding_keys(self.queue):
                        await source.bind(
                            broker.amqp.exchange, key, arguments=broker.amqp.queue_binding_args or None
                        )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await channel.close()
                    raise
                self._channel, self._source = channel, source
            assert self._source is not None
            self._consumer_tag = await self._source.consume(
                self._on_message, no_ack=False, consumer_tag=self.tag or None
            )
            logger.debug("consuming %r (prefetch %d)", self.queue, self.prefetch)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        self._arrived.set()

    async def _pause(self) -> None:
        """Stop the push and hand back what was pushed but not fetched."""
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is not None and self._source is not None:
            with contextlib.suppress(Exception):
                await self._source.cancel(tag)
        await self.release_buffer()

    async def release_buffer(self) -> None:
        while self._buffer:
            message = self._buffer.popleft()
            if is_live(message):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)

    # -- Consumer interface ---------------------------------------------------------

    async def fetch(self, max_count: int) -> list[Delivery]:
        if self._closed:
            return []
        deadline = time.monotonic() + WAIT
        try:
            if self._consumer_tag is None:
                await self._start()
            while not self._closed:
                out = self._take(max_count)
                if out:
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
        except asyncio.CancelledError:
            # The worker stops fetching (graceful stop): stop the push now, so messages
            # are not held here while running tasks finish.
            if self._pausing is None and self._consumer_tag is not None:
                self._pausing = asyncio.get_running_loop().create_task(self._pause())
            raise
        return []

    def _take(self, max_count: int) -> list[Delivery]:
        out: list[Delivery] = []
        while self._buffer and len(out) < max_count:
            message = self._buffer.popleft()
            if not is_live(message):
                continue  # its channel is gone: RabbitMQ delivers it again
            out.append(
                Delivery(message.body, self.queue, token=message, redelivered=bool(message.redelivered))
            )
        return out

    async def ack(self, delivery: Delivery) -> None:
        message: AbstractIncomingMessage = delivery.token
        if message.processed:
            return  # settled already
        if not is_live(message):
            logger.info(
                "not acking a task from %r: its channel closed, so RabbitMQ will deliver it again", self.queue
            )
            return
        await message.ack()

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Put the message at the back of its queue, after ``delay`` s.

        A copy goes to the tail (with a delay, through ``<queue>.handback``, a TTL
        queue that dead-letters into the queue) and the delivery is acked, rather
        than Go's nack-requeue, which puts it back at the head: a worker would
        receive the same message again at once and never reach the ones behind it.
        If the copy cannot be published, the delivery is nacked with requeue.
        """
        message: AbstractIncomingMessage = delivery.token
        if message.processed or not is_live(message):
            return
        try:
            await self.broker.return_to_queue(self.queue, message, delay)
        except Exception as exc:
            logger.warning(
                "could not move a task to the back of %r (%s); requeueing it in place", self.queue, exc
            )
            await message.nack(requeue=True)
            return
        await message.ack()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        message: AbstractIncomingMessage = delivery.token
        if message.processed:
            return
        try:
            await self.broker.publish_dead_letter(
                self.queue, delivery.body, dict(message.headers or {}), reason
            )
        except Exception:
            # Not set aside: hand it back after a pause rather than drop it or spin on it.
            await asyncio.sleep(DEAD_LETTER_RETRY_DELAY)
            await self.requeue(delivery)
            raise
        if is_live(message):
            await message.ack()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            message: AbstractIncomingMessage = delivery.token
            if not message.processed and is_live(message):
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)

    async def close(self) -> None:
        self._closed = True
        self._arrived.set()
        if self._pausing is not None:
            with contextlib.suppress(Exception):
                await self._pausing
        await self._pause()
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            # Closing the channel returns every message still unacked to the queue.
            with contextlib.suppress(Exception):
                await channel.close()
