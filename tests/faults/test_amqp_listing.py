"""Regression (found by case 3 on RabbitMQ): ``inspect dead`` right after another listing
showed 1,876 of 2,000 dead letters, because basic.nack has no reply and the first listing
returned before RabbitMQ had put its messages back. A listing now returns once they are."""

from __future__ import annotations

import aio_pika
import pytest

from machinery_aio import Server
from machinery_aio.drivers.amqp import layout
from machinery_aio.drivers.redis.connection import RedisClient
from tests.faults.conftest import amqp_config

pytestmark = pytest.mark.timeout(120)

LETTERS = 2000


async def test_back_to_back_dead_letter_listings_see_everything(
    raw: RedisClient, unique: str, vhost: str
) -> None:
    config = amqp_config(unique, vhost)
    server = Server(config)
    dead = layout.dead_letter_queue(config.default_queue)
    connection = await aio_pika.connect(config.broker)
    try:
        channel = await connection.channel()
        await channel.declare_queue(dead, durable=True)
        for i in range(LETTERS):
            await channel.default_exchange.publish(
                aio_pika.Message(f"bad {i}".encode(), headers={layout.REASON_HEADER: "not JSON"}),
                routing_key=dead,
            )
        for _ in range(3):
            letters = await server.broker.get_dead_letters(config.default_queue)
            assert len(letters) == LETTERS
            assert {letter.reason for letter in letters} == {"not JSON"}
    finally:
        await connection.close()
        await server.close()
