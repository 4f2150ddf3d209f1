"""The RabbitMQ broker against the real server: layout, properties, delays, bad input, inspection."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity

from machinery_aio import Arg, Config, ConfigError, Server, Signature, State, gotime
from machinery_aio.config import AMQPConfig
from machinery_aio.drivers.amqp.broker import AMQPBroker
from tests.drivers.amqp.conftest import amqp_test_config
from tests.support.rabbitmq import AMQP_URL, Cleanup

ServerFactory = Callable[[Config], Server]


@pytest.fixture
async def raw(rabbitmq: None) -> AsyncIterator[AbstractConnection]:
    """A plain aio-pika connection, to publish and look at messages by hand."""
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


async def message_count(raw: AbstractConnection, queue: str) -> int | None:
    channel = await raw.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return None
    count = declared.declaration_result.message_count
    await channel.close()
    return count


async def wait_until(check: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll a check (plain or async) until it is truthy; the timeout is only a hang guard."""
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.05)


async def waiting(server: Server) -> list[Signature]:
    """Tasks in the queue, or handed back to it for later."""
    return [*await server.broker.get_pending_tasks(), *await server.broker.get_held_tasks()]


def add_sig(*values: int, **fields: object) -> Signature:
    return Signature(name="add", args=[Arg(type="int64", value=v) for v in values], **fields)


def with_add(server: Server) -> Server:
    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    return server


async def test_publish_uses_go_message_properties(
    amqp_server: ServerFactory, unique: str, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    config = amqp_test_config(unique, queue_declare_args={"x-max-priority": 10})
    server = amqp_server(config)
    sig = add_sig(1, 2, headers={"trace": "abc", "count": 5, "flag": True}, priority=3)
    await server.send_task(sig)  # returns once RabbitMQ confirmed the message

    channel = await raw.channel()
    queue = await channel.get_queue(config.default_queue)
    message = await queue.get(no_ack=True)
    assert message.exchange == config.amqp.exchange
    assert message.routing_key == config.default_queue
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.priority == 3
    assert message.headers == {"trace": "abc", "count": "5", "flag": "true"}
    body = json.loads(message.body)
    assert list(body) == [
        "UUID",
        "Name",
        "RoutingKey",
        "ETA",
        "GroupUUID",
        "GroupTaskCount",
        "Args",
        "Headers",
        "Priority",
        "Immutable",
        "RetryCount",
        "RetryTimeout",
        "OnSuccess",
        "OnError",
        "ChordCallback",
        "BrokerMessageGroupId",
        "SQSReceiptHandle",
        "StopTaskDeletionOnError",
        "IgnoreWhenTaskNotRegistered",
    ]
    assert body["Headers"] == {"trace": "abc", "count": "5", "flag": "true"}
    assert body["RoutingKey"] == config.default_queue
    assert body["Priority"] == 3


async def test_go_binding_key_reaches_the_default_queue_without_a_phantom_queue(
    amqp_server: ServerFactory, unique: str, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    # Go's defaults: binding key machinery_task next to the queue machinery_tasks.
    config = amqp_test_config(unique, binding_key=f"{unique}_task")
    cleanup.queues.add(f"{unique}_task")
    server = with_add(amqp_server(config))
    sig = add_sig(2, 3)
    await server.send_task(sig)
    assert sig.routing_key == f"{unique}_task"  # Go's AdjustRoutingKey on a direct exchange
    assert await message_count(raw, config.default_queue) == 1
    assert await message_count(raw, f"{unique}_task") is None

    # A message published by hand as Go does (routing key = binding key) reaches the worker.
    channel = await raw.channel()
    exchange = await channel.get_exchange(config.amqp.exchange)
    by_hand = add_sig(4, 5, routing_key=f"{unique}_task", uuid="task_" + unique)
    cleanup.signature(by_hand)
    await exchange.publish(aio_pika.Message(by_hand.to_json()), f"{unique}_task")
    async with server.new_worker("w", concurrency=2):
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 5
        assert await server.get_async_result(by_hand.uuid).get(timeout=30) == 9


async def test_routing_key_declares_and_binds_its_own_queue(
    amqp_server: ServerFactory,
    amqp_config: Config,
    unique: str,
    raw: AbstractConnection,
    cleanup: Cleanup,
) -> None:
    other = f"{unique}_other"
    cleanup.queues.add(other)
    server = with_add(amqp_server(amqp_config))
    sig = add_sig(1, 1, routing_key=other)
    await server.send_task(sig)
    assert await message_count(raw, other) == 1
    async with server.new_worker("w", concurrency=1, queue=other):
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 2


async def test_priority_orders_delivery(amqp_server: ServerFactory, unique: str, cleanup: Cleanup) -> None:
    config = amqp_test_config(unique, queue_declare_args={"x-max-priority": 10})
    server = amqp_server(config)
    order: list[int] = []

    @server.task("note")
    async def note(value: int) -> None:
        order.append(value)

    for value, priority in ((1, 0), (2, 0), (9, 9)):
        await server.send_task(
            Signature(name="note", args=[Arg(type="int64", value=value)], priority=priority)
        )
    async with server.new_worker("w", concurrency=1):
        await wait_until(lambda: len(order) == 3)
    assert order[0] == 9


async def test_eta_goes_through_a_go_delay_queue(
    amqp_server: ServerFactory, amqp_config: Config, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    server = with_add(amqp_server(amqp_config))
    sig = add_sig(20, 22, eta=gotime.now() + timedelta(seconds=3))
    await server.send_task(sig)
    delay_queue = f"delay.3000.{amqp_config.amqp.exchange}.{amqp_config.default_queue}"
    cleanup.queues.add(delay_queue)
    assert await message_count(raw, delay_queue) == 1
    assert await message_count(raw, amqp_config.default_queue) == 0
    async with server.new_worker("w", concurrency=1):
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 42


async def test_long_delays_share_bounded_queues(
    amqp_server: ServerFactory, amqp_config: Config, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    server = amqp_server(amqp_config)
    queue = f"delay.140000.{amqp_config.amqp.exchange}.{amqp_config.default_queue}"
    cleanup.queues.add(queue)
    for seconds in (141, 145, 149):
        await server.send_task(add_sig(1, eta=gotime.now() + timedelta(seconds=seconds)))
    assert await message_count(raw, queue) == 3


async def test_exact_delays_give_each_delay_its_queue(
    amqp_config: Config, cleanup: Cleanup, raw: AbstractConnection
) -> None:
    broker = AMQPBroker(amqp_config, exact_delays=True)
    try:
        sig = add_sig(
            1,
            eta=gotime.now() + timedelta(seconds=120, milliseconds=123),
            uuid="task_" + amqp_config.default_queue,
        )
        await broker.publish(sig)
    finally:
        await broker.close()
    names = [
        f"delay.{ms}.{amqp_config.amqp.exchange}.{amqp_config.default_queue}"
        for ms in range(120_000, 120_124)
    ]
    cleanup.queues.update(names)
    counts = [await message_count(raw, name) for name in names]
    assert sum(1 for c in counts if c) == 1


async def test_delayed_queue_mode(
    amqp_server: ServerFactory, unique: str, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    config = amqp_test_config(unique, delayed_queue=f"{unique}_delayed")
    other = f"{unique}_other"
    cleanup.queues.update({other, f"{unique}_delayed.{other}"})
    server = with_add(amqp_server(config))
    first = add_sig(1, 2, eta=gotime.now() + timedelta(seconds=1))
    second = add_sig(3, 4, eta=gotime.now() + timedelta(seconds=1), routing_key=other)
    await server.send_task(first)
    await server.send_task(second)  # Go: PRECONDITION_FAILED for a second routing key
    assert await message_count(raw, f"{unique}_delayed") == 1
    assert await message_count(raw, f"{unique}_delayed.{other}") == 1
    async with server.new_worker("w", concurrency=1):
        assert await server.get_async_result(first.uuid).get(timeout=30) == 3
    async with server.new_worker("w2", concurrency=1, queue=other):
        assert await server.get_async_result(second.uuid).get(timeout=30) == 7


async def test_undecodable_message_is_dead_lettered_once(
    amqp_server: ServerFactory, amqp_config: Config, raw: AbstractConnection
) -> None:
    server = with_add(amqp_server(amqp_config))
    await server.broker.connect()
    await server.broker.declare_queue(amqp_config.default_queue, [amqp_config.default_queue])  # type: ignore[attr-defined]
    channel = await raw.channel()
    exchange = await channel.get_exchange(amqp_config.amqp.exchange)
    await exchange.publish(aio_pika.Message(b"\xff not json", headers={"k": "v"}), amqp_config.default_queue)
    async with server.new_worker("w", concurrency=2):
        await wait_until(lambda: server.broker.get_dead_letters())
        # Set aside with its reason; not redelivered in a loop.
        assert await message_count(raw, amqp_config.default_queue) == 0
    letters = await server.broker.get_dead_letters()
    assert len(letters) == 1
    assert "not valid JSON" in letters[0].reason
    assert letters[0].queue == amqp_config.default_queue
    assert letters[0].body.endswith("not json")
    assert letters[0].failed_at
    assert len(await server.broker.get_dead_letters()) == 1  # listing takes nothing


async def test_bad_arguments_fail_the_task_and_are_dead_lettered(
    amqp_server: ServerFactory, amqp_config: Config
) -> None:
    server = with_add(amqp_server(amqp_config))
    sig = Signature(name="add", args=[Arg(type="string", value="one")])
    async with server.new_worker("w", concurrency=2):
        result = await server.send_task(sig)
        state = await server.backend.wait_for_state(result.task_uuid, 30)
    assert state.state is State.FAILURE
    assert "bad arguments" in state.error
    letters = await server.broker.get_dead_letters()
    assert [json.loads(letter.body)["UUID"] for letter in letters] == [sig.uuid]


async def test_unregistered_task_is_handed_back_and_runs_where_registered(
    amqp_server: ServerFactory, amqp_config: Config, raw: AbstractConnection
) -> None:
    server = amqp_server(amqp_config)
    sig = add_sig(5, 6)
    await server.send_task(sig)
    worker = server.new_worker("w", concurrency=1, unregistered_backoff=(0.1, 0.2))
    handed_back = 0

    async with worker:
        consumer = worker._consumer
        assert consumer is not None
        requeue = consumer.requeue

        async def counting(delivery: object, delay: float = 0.0) -> None:
            nonlocal handed_back
            handed_back += 1
            await requeue(delivery, delay)  # type: ignore[arg-type]

        consumer.requeue = counting  # type: ignore[method-assign]
        await wait_until(lambda: handed_back >= 2)
    assert [t.uuid for t in await waiting(server)] == [sig.uuid]
    with_add(server)
    async with server.new_worker("w2", concurrency=1):
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 11


async def test_unregistered_task_does_not_hold_up_the_tasks_behind_it(
    amqp_server: ServerFactory, amqp_config: Config
) -> None:
    server = with_add(amqp_server(amqp_config))
    await server.send_task(Signature(name="nobody"))
    sig = add_sig(1, 2)
    await server.send_task(sig)
    # One at a time: the unknown task goes to the back of the queue, not to the front.
    async with server.new_worker("w", concurrency=1, unregistered_backoff=(0.1, 0.2)):
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 3
    assert [t.name for t in await waiting(server)] == ["nobody"]


async def test_ignore_when_task_not_registered_drops_it(
    amqp_server: ServerFactory, amqp_config: Config, raw: AbstractConnection
) -> None:
    server = amqp_server(amqp_config)
    await server.send_task(add_sig(1, ignore_when_task_not_registered=True))
    async with server.new_worker("w", concurrency=1):

        async def gone() -> bool:
            return await message_count(raw, amqp_config.default_queue) == 0

        await wait_until(gone)
    assert await server.broker.get_pending_tasks() == []


async def test_pending_tasks_are_listed_without_taking_them_and_purged(
    amqp_server: ServerFactory, amqp_config: Config
) -> None:
    server = amqp_server(amqp_config)
    sigs = [add_sig(i) for i in range(3)]
    for sig in sigs:
        await server.send_task(sig)
    for _ in range(2):
        assert [t.uuid for t in await server.broker.get_pending_tasks()] == [s.uuid for s in sigs]
    assert await server.broker.purge() == 3
    assert await server.broker.get_pending_tasks() == []
    assert await server.broker.purge("no_such_queue_" + amqp_config.default_queue) == 0
    assert await server.broker.get_pending_tasks("no_such_queue_" + amqp_config.default_queue) == []


async def test_graceful_stop_finishes_running_tasks_and_hands_back_the_rest(
    amqp_server: ServerFactory, amqp_config: Config
) -> None:
    server = amqp_server(amqp_config)
    started: list[int] = []
    gate = asyncio.Event()

    @server.task("slow")
    async def slow(value: int) -> int:
        started.append(value)
        await gate.wait()
        return value

    sigs = [Signature(name="slow", args=[Arg(type="int64", value=i)]) for i in range(6)]
    for sig in sigs:
        await server.send_task(sig)
    worker = server.new_worker("w", concurrency=2)
    await worker.start()
    await wait_until(lambda: len(started) == 2)
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.2)
    gate.set()
    await stopping
    states = [await server.get_async_result(s.uuid).get_state() for s in sigs]
    assert sorted(s.task_uuid for s in states if s.state is State.SUCCESS) == sorted(
        sigs[i].uuid for i in started
    )
    pending = {t.uuid for t in await server.broker.get_pending_tasks()}
    assert pending == {s.uuid for i, s in enumerate(sigs) if i not in started}


async def test_queue_declared_with_other_arguments_is_a_clear_error(
    amqp_server: ServerFactory, unique: str, raw: AbstractConnection, cleanup: Cleanup
) -> None:
    config = amqp_test_config(unique, queue_declare_args={"x-max-priority": 10})
    channel = await raw.channel()
    await channel.declare_queue(config.default_queue, durable=True, arguments={"x-max-priority": 5})
    server = amqp_server(config)
    with pytest.raises(ConfigError, match="x-max-priority"):
        await server.send_task(add_sig(1))
    # The broker carries on for queues that are declared right.
    other = f"{unique}_fine"
    cleanup.queues.add(other)
    await server.send_task(add_sig(1, routing_key=other))
    assert await message_count(raw, other) == 1


async def test_failover_to_the_next_broker_url(
    amqp_server: ServerFactory, unique: str, raw: AbstractConnection
) -> None:
    config = amqp_test_config(unique)
    config.broker = f"amqp://guest:guest@127.0.0.1:1/|{AMQP_URL}"
    config.multiple_broker_separator = "|"
    server = amqp_server(config)
    await server.send_task(add_sig(1))
    assert await message_count(raw, config.default_queue) == 1


async def test_wrong_password_is_a_clear_error_without_the_password(unique: str, rabbitmq: None) -> None:
    config = Config(
        broker="amqp://guest:s3cretpw@127.0.0.1:5672/",
        default_queue=unique,
        amqp=AMQPConfig(exchange=f"{unique}_exchange"),
    )
    broker = AMQPBroker(config)
    with pytest.raises(ConnectionError) as caught:
        await broker.connect()
    assert "s3cretpw" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    await broker.close()


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "AMQP_EXCHANGE": config.amqp.exchange,
        "RESULTS_EXPIRE_IN": str(config.results_expire_in),
    }
    return subprocess.run(
        [sys.executable, "-m", "machinery_aio", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_inspects_and_purges_a_queue(amqp_server: ServerFactory, amqp_config: Config) -> None:
    server = amqp_server(amqp_config)
    sigs = [add_sig(1), add_sig(2)]
    for sig in sigs:
        await server.send_task(sig)
    await server.broker.publish_dead_letter(  # type: ignore[attr-defined]
        amqp_config.default_queue, b"{oops", {}, "message is not valid JSON"
    )

    pending = await asyncio.to_thread(cli, amqp_config, "inspect", "pending")
    assert pending.returncode == 0, pending.stderr
    assert [t["uuid"] for t in json.loads(pending.stdout)] == [s.uuid for s in sigs]
    dead = await asyncio.to_thread(cli, amqp_config, "inspect", "dead")
    assert [d["reason"] for d in json.loads(dead.stdout)] == ["message is not valid JSON"]
    delayed = await asyncio.to_thread(cli, amqp_config, "inspect", "delayed")
    assert delayed.returncode == 2
    assert "cannot list delayed tasks" in delayed.stderr
    purged = await asyncio.to_thread(cli, amqp_config, "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2" in purged.stdout
    assert await server.broker.get_pending_tasks() == []
