"""The RabbitMQ consumer's hand-back for later: a copy waits in ``<queue>.handback`` (a TTL
queue dead-lettering to the default exchange, routing key ``<queue>``), then comes back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from machinery_aio import Config, Signature
from machinery_aio.drivers.amqp.broker import AMQPBroker
from machinery_aio.drivers.broker import Consumer, Delivery
from tests.support.rabbitmq import AMQP_URL, Cleanup

DELAY = 1.5
"""Seconds a hand-back waits."""


@pytest.fixture
async def raw(rabbitmq: None) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


@pytest.fixture
async def broker(amqp_config: Config) -> AsyncIterator[AMQPBroker]:
    made = AMQPBroker(amqp_config)
    yield made
    await made.close()


async def fetch_one(consumer: Consumer) -> Delivery:
    for _ in range(60):  # a hang guard: each fetch waits up to 1 s
        got = await consumer.fetch(1)
        if got:
            assert len(got) == 1
            return got[0]
    raise AssertionError("nothing was delivered")


async def peek(raw: AbstractConnection, queue: str) -> AbstractIncomingMessage:
    """The first message of ``queue``, left in place."""
    channel = await raw.channel()
    try:
        source = await channel.get_queue(queue, ensure=False)
        message = await source.get(no_ack=False)
        await message.nack(requeue=True)
        return message
    finally:
        await channel.close()


def without_dead_lettering(headers: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in headers.items() if not k.startswith(("x-death", "x-first-death", "x-last-death"))
    }


@pytest.mark.parametrize("custom", [False, True], ids=["default-queue", "custom-queue"])
async def test_a_delayed_hand_back_waits_in_the_handback_queue_and_comes_back_unchanged(
    broker: AMQPBroker, amqp_config: Config, raw: AbstractConnection, cleanup: Cleanup, custom: bool
) -> None:
    queue = amqp_config.default_queue
    if custom:
        queue = f"{queue}_custom"
        cleanup.queue(queue)
    sig = Signature(uuid=f"task_{queue}", name="nobody", routing_key=queue, headers={"trace": "abc"})
    cleanup.signature(sig)
    await broker.publish(sig)
    consumer = broker.consumer(queue, prefetch=1, tag="handback")
    try:
        first = held = await fetch_one(consumer)
        for _ in range(2):  # the second time, the message came through the hand-back queue
            handed_back = time.monotonic()
            await consumer.requeue(held, DELAY)

            waiting = await peek(raw, f"{queue}.handback")
            assert waiting.body == first.body
            assert waiting.headers == {"trace": "abc"}  # no x-death, even the second time
            assert waiting.expiration == DELAY
            assert [t.uuid for t in await broker.get_held_tasks(queue)] == [sig.uuid]
            assert await broker.count_pending(queue) == 0

            held = await fetch_one(consumer)
            assert time.monotonic() - handed_back >= DELAY - 0.05
            assert held.body == first.body
            message: AbstractIncomingMessage = held.token
            assert without_dead_lettering(dict(message.headers or {})) == {"trace": "abc"}
            assert message.routing_key == queue  # straight back into its own queue
        await consumer.ack(held)
    finally:
        await consumer.close()
    assert await broker.get_held_tasks(queue) == []
    assert await broker.count_pending(amqp_config.default_queue) == 0
    assert await broker.count_pending(queue) == 0
