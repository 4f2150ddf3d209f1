"""Revocations over RabbitMQ: a fanout exchange into a stream.

A revocation is published (persistent) to the durable fanout exchange
``machinery_aio.control``, which routes it to the stream
``machinery_aio.revoked.<results_expire_in>s`` (``x-max-age`` of that many seconds, so
revocations expire with the results). Every worker reads the stream from its first
message, so a worker started later still sees every revocation, and then each new one
as it is published. To know when it has caught up, a worker publishes a marker of its
own and waits for it to come back through the stream; it does so again after a
reconnect. Reading a stream takes nothing from it (RabbitMQ 3.9 and later).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustChannel

from ...log import get_logger
from ..control import ControlChannel, Revocation, RevocationHandler
from .connection import open_channel

if TYPE_CHECKING:
    from .backend import AMQPBackend

__all__ = ["CONTROL_EXCHANGE", "AMQPControl"]

logger = get_logger("machinery_aio.worker")

CONTROL_EXCHANGE = "machinery_aio.control"
PREFETCH = 500
"""Stream messages RabbitMQ sends ahead of acks (a stream consumer needs a prefetch)."""


class AMQPControl(ControlChannel):
    """The control channel of an AMQP result backend."""

    def __init__(self, backend: AMQPBackend) -> None:
        self.backend = backend
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def stream(self) -> str:
        return f"machinery_aio.revoked.{self.backend.expires_in}s"

    async def _declare(self, channel: AbstractRobustChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(CONTROL_EXCHANGE, ExchangeType.FANOUT, durable=True)
        arguments = {"x-queue-type": "stream", "x-max-age": f"{self.backend.expires_in}s"}
        queue = await channel.declare_queue(self.stream, durable=True, arguments=arguments)
        await queue.bind(exchange)
        return exchange

    async def _publisher(self) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed or self._exchange is None:
            connection = await self.backend.connection()
            self._channel = await open_channel(connection, publisher_confirms=True)
            self._exchange = await self._declare(self._channel)
        return self._exchange

    async def announce(self, revocation: Revocation) -> None:
        await self._publish(revocation.to_json())

    async def _publish(self, body: bytes) -> None:
        exchange = await self._publisher()
        message = Message(body, content_type="application/json", delivery_mode=DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key="")

    async def listen(self, handler: RevocationHandler, ready: Callable[[bool], None]) -> None:
        connection = await self.backend.connection()
        channel = await open_channel(connection, publisher_confirms=False)
        marker = {"token": ""}
        stopping = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            if stopping.is_set():
                return  # an ack racing the channel's close would close the whole connection
            try:
                doc = json.loads(message.body)
                if isinstance(doc, dict) and "marker" in doc:
                    if doc["marker"] == marker["token"]:
                        ready(True)
                else:
                    handler(Revocation.from_json(message.body))
            except ValueError as exc:
                logger.warning("ignoring a message in %s: %s", self.stream, exc)
            finally:
                if not stopping.is_set() and not channel.is_closed:
                    await message.ack()

        async def catch_up() -> None:
            marker["token"] = secrets.token_hex(8)
            await self._publish(json.dumps({"marker": marker["token"]}).encode())

        def reconnected(*_: Any) -> None:
            ready(False)
            asyncio.get_running_loop().create_task(catch_up())

        tag = ""
        try:
            await channel.set_qos(prefetch_count=PREFETCH)
            await self._declare(channel)
            queue = await channel.get_queue(self.stream)
            tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
            connection.reconnect_callbacks.add(reconnected)
            await catch_up()
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            stopping.set()
            connection.reconnect_callbacks.discard(reconnected)
            if not channel.is_closed and tag:
                try:
                    await queue.cancel(tag)
                except Exception as exc:
                    logger.debug("cancelling the revocation consumer failed: %s", exc)
            if not channel.is_closed:
                try:
                    await channel.close()
                except Exception as exc:
                    logger.debug("closing the revocation channel failed: %s", exc)
