"""Worker heartbeats in RabbitMQ: messages in the queue ``machinery_workers``.

RabbitMQ keeps no records to overwrite, so each heartbeat is a message (the worker's
record, its key and expiry in headers, a per-message TTL to match); a clean stop sends a
tombstone. A reader reads every message with ``basic.get`` and puts them all back (as
``inspect pending`` does), keeps the latest per worker and drops expired ones and those
whose latest message is a tombstone. While one reader holds the messages, another sees
fewer: listings are for people, not for coordination. The queue holds at most
``MAX_LENGTH`` messages (the oldest go first), enough for hundreds of workers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import FieldValue

from .connection import held_messages, retry_transient, scratch_channel

if TYPE_CHECKING:
    from .broker import AMQPBroker

__all__ = ["WORKERS_QUEUE", "list_workers", "record_worker", "remove_worker"]

WORKERS_QUEUE = "machinery_workers"
MAX_LENGTH = 10_000
KEY_HEADER = "x-machinery-worker"
EXPIRES_HEADER = "x-machinery-expires-at"
GONE_HEADER = "x-machinery-worker-gone"
QUEUE_ARGUMENTS: dict[str, Any] = {"x-max-length": MAX_LENGTH, "x-overflow": "drop-head"}
TOMBSTONE_TTL = 120.0
"""Seconds a tombstone lives when the worker's own record timeout is not known here."""


async def _publish(broker: AMQPBroker, message: Message) -> None:
    async def attempt() -> None:
        declarer = await broker._declare_channel()
        await declarer.declare_queue(WORKERS_QUEUE, durable=True, arguments=QUEUE_ARGUMENTS, robust=False)
        channel = await broker._publish_channel()
        await channel.default_exchange.publish(message, WORKERS_QUEUE)

    await retry_transient(attempt, "publishing a worker heartbeat")


async def record_worker(broker: AMQPBroker, key: str, data: bytes, expires_at: float) -> None:
    ttl = max(0.001, expires_at - time.time())
    headers: dict[str, FieldValue] = {KEY_HEADER: key, EXPIRES_HEADER: f"{expires_at:.3f}"}
    await _publish(
        broker, Message(data, headers=headers, expiration=ttl, delivery_mode=DeliveryMode.NOT_PERSISTENT)
    )


async def remove_worker(broker: AMQPBroker, key: str, ttl: float = TOMBSTONE_TTL) -> None:
    headers: dict[str, FieldValue] = {
        KEY_HEADER: key,
        EXPIRES_HEADER: f"{time.time() + ttl:.3f}",
        GONE_HEADER: "1",
    }
    await _publish(
        broker, Message(b"", headers=headers, expiration=ttl, delivery_mode=DeliveryMode.NOT_PERSISTENT)
    )


async def list_workers(broker: AMQPBroker) -> list[bytes]:
    from .broker import _message_count, _wait_requeued

    latest: dict[str, tuple[bytes | None, float]] = {}
    async with scratch_channel(await broker.connection()) as channel:
        count = await _message_count(channel, WORKERS_QUEUE)
        if not count:
            return []
        async with held_messages(channel, WORKERS_QUEUE, count) as held:
            for message in held:
                headers = message.headers or {}
                key, expires = _text(headers.get(KEY_HEADER)), _text(headers.get(EXPIRES_HEADER))
                try:
                    expires_at = float(expires)
                except ValueError:
                    continue  # not a heartbeat of ours
                latest[key] = (None if headers.get(GONE_HEADER) else message.body, expires_at)
        await _wait_requeued(channel, WORKERS_QUEUE, len(held))
    now = time.time()
    return [data for data, expires_at in latest.values() if data is not None and expires_at > now]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
