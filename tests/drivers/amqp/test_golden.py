"""Go Machinery's golden messages, published to RabbitMQ by hand as a Go producer would, run.

The bytes are the golden files' with only the UUIDs and the queue name
replaced (so parallel runs do not share them).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest

from machinery_aio import Config, Server, Signature, State, TaskState
from tests.conftest import golden
from tests.drivers.amqp.conftest import (
    REDIS_BACKEND_URL,
    amqp_test_config,
    purge_recorded,
    require_redis_backend,
)
from tests.support.rabbitmq import AMQP_URL, Cleanup

UUID = re.compile(rb"(task|group|chord)_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def localise(body: bytes, queue: str, cleanup: Cleanup, seen: dict[bytes, bytes]) -> bytes:
    """Fresh UUIDs (the same golden UUID always gets the same fresh one) and this test's queue."""

    def fresh(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        if old not in seen:
            seen[old] = match.group(1) + b"_" + str(uuid.uuid4()).encode()
        return seen[old]

    body = UUID.sub(fresh, body).replace(b'"machinery_tasks"', b'"' + queue.encode() + b'"')
    cleanup.signature(Signature.from_json(body))
    return body


@pytest.fixture(params=["amqp", "redis"])
async def server(
    request: pytest.FixtureRequest, unique: str, cleanup: Cleanup, amqp_server: Callable[[Config], Server]
) -> AsyncIterator[Server]:
    if request.param == "redis":
        require_redis_backend()
        config = amqp_test_config(unique, backend=REDIS_BACKEND_URL)
    else:
        config = amqp_test_config(unique)
    server = amqp_server(config)

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    @server.task("multiply")
    async def multiply(*numbers: int) -> int:
        product = 1
        for n in numbers:
            product *= n
        return product

    yield server
    if request.param == "redis":
        await purge_recorded(server, cleanup)


async def publish_as_go(config: Config, *bodies: bytes) -> None:
    """What Go's AMQP broker does: declare the durable exchange, and a queue named after the
    routing key bound with it, then publish persistent JSON with the headers and priority."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            config.amqp.exchange, config.amqp.exchange_type, durable=True
        )
        for body in bodies:
            sig = Signature.from_json(body)
            queue = await channel.declare_queue(
                sig.routing_key, durable=True, arguments=config.amqp.queue_declare_args or None
            )
            await queue.bind(exchange, sig.routing_key)
            await exchange.publish(
                aio_pika.Message(
                    body,
                    headers=sig.headers or {},
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    priority=sig.priority,
                ),
                sig.routing_key,
            )
    finally:
        await connection.close()


async def test_plain_task_with_a_past_eta(server: Server, cleanup: Cleanup) -> None:
    body = localise(golden("01_plain_task_int64_eta"), server.config.default_queue, cleanup, {})
    sig = Signature.from_json(body)
    async with server.new_worker("w", concurrency=2):
        await server.backend.set_state(TaskState.new(sig, State.PENDING))
        await publish_as_go(server.config, body)
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 3


async def test_chain(server: Server, cleanup: Cleanup) -> None:
    body = localise(golden("02_chain_onsuccess_nesting"), server.config.default_queue, cleanup, {})
    head = Signature.from_json(body)
    assert head.on_success is not None
    assert head.on_success[0].on_success is not None
    last = head.on_success[0].on_success[0]
    async with server.new_worker("w", concurrency=2):
        await server.backend.set_state(TaskState.new(head, State.PENDING))
        await publish_as_go(server.config, body)
        # add(1,1) -> add(5,5,2) -> multiply(4,12)
        assert await server.get_async_result(last.uuid).get(timeout=30) == 48


async def test_chord_sent_by_go(server: Server, cleanup: Cleanup) -> None:
    seen: dict[bytes, bytes] = {}
    first = localise(golden("03_chord_member"), server.config.default_queue, cleanup, seen)
    # The second member: the same message with a UUID of its own.
    member_uuid = Signature.from_json(first).uuid.encode()
    second = first.replace(member_uuid, b"task_" + str(uuid.uuid4()).encode())
    cleanup.signature(Signature.from_json(second))
    members = [Signature.from_json(first), Signature.from_json(second)]
    callback = members[0].chord_callback
    assert callback is not None
    if server.config.result_backend.startswith("redis"):
        # Go's Redis backend writes GroupMeta; its AMQP backend keeps none.
        await server.backend.init_group(members[0].group_uuid, [m.uuid for m in members])
    for member in members:
        await server.backend.set_state(TaskState.new(member, State.PENDING))
    async with server.new_worker("w", concurrency=2):
        await publish_as_go(server.config, first, second)
        assert await server.get_async_result(callback.uuid).get(timeout=60) == 4
