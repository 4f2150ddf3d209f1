"""The AMQP result backend against the real RabbitMQ: Go's layout, reads, waiting, chords."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection

from machinery_aio import Config, ConfigError, Signature, State, TaskResult, TaskState
from machinery_aio.drivers.amqp.backend import AMQPBackend
from tests.conftest import golden
from tests.support.rabbitmq import AMQP_URL, Cleanup


@pytest.fixture
async def raw(rabbitmq: None) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


@pytest.fixture
async def backends(amqp_config: Config) -> AsyncIterator[list[AMQPBackend]]:
    """Two backends on two connections, as two worker processes would have."""
    made = [AMQPBackend(amqp_config), AMQPBackend(amqp_config)]
    yield made
    for backend in made:
        await backend.close()


def member(group_uuid: str, index: int, count: int, unique: str, cleanup: Cleanup) -> Signature:
    sig = Signature(name="add", uuid=f"task_{unique}_{index}", group_uuid=group_uuid, group_task_count=count)
    cleanup.signature(sig)
    return sig


def result(value: int) -> list[TaskResult]:
    return [TaskResult(type="int64", value=value)]


async def test_states_are_stored_in_gos_layout(
    backends: list[AMQPBackend],
    amqp_config: Config,
    raw: AbstractConnection,
    unique: str,
    cleanup: Cleanup,
) -> None:
    backend = backends[0]
    sig = Signature(name="add", uuid=f"task_{unique}")
    cleanup.signature(sig)
    await backend.set_state(TaskState.new(sig, State.PENDING))
    channel = await raw.channel()
    # Go declares the queue with these arguments: declaring it the same way is accepted.
    ttl = amqp_config.results_expire_in * 1000
    queue = await channel.declare_queue(
        sig.uuid, durable=False, auto_delete=True, arguments={"x-message-ttl": ttl, "x-expires": ttl}
    )
    message = await queue.get(no_ack=False)
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    body = json.loads(message.body)
    assert list(body) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
    assert body["State"] == "PENDING"
    await message.nack(requeue=True)


async def test_reads_keep_the_result_and_walk_nothing_away(
    backends: list[AMQPBackend], raw: AbstractConnection, unique: str, cleanup: Cleanup
) -> None:
    writer, reader = backends
    sig = Signature(name="add", uuid=f"task_{unique}")
    cleanup.signature(sig)
    await writer.set_state(TaskState.new(sig, State.PENDING))
    pending = await reader.get_state(sig.uuid)
    assert pending is not None
    await writer.set_state(TaskState.new(sig, State.RECEIVED))
    await writer.set_state(TaskState.new(sig, State.STARTED))
    await writer.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=result(3)))
    for _ in range(3):
        state = await reader.get_state(sig.uuid)
        assert state is not None
        assert state.state is State.SUCCESS
        assert state.value == 3
        assert state.created_at == pending.created_at
    # Superseded states were dropped; a Go reader, which consumes the oldest state each
    # time, still walks to the final one.
    channel = await raw.channel()
    queue = await channel.get_queue(sig.uuid)
    seen = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        seen.append(json.loads(message.body)["State"])
    assert seen == ["PENDING", "SUCCESS"]


async def test_reads_a_state_written_by_go(
    backends: list[AMQPBackend],
    amqp_config: Config,
    raw: AbstractConnection,
    unique: str,
    cleanup: Cleanup,
) -> None:
    record = json.loads(golden("11_task_state_success"))
    record["TaskUUID"] = f"task_{unique}"
    cleanup.queues.add(record["TaskUUID"])
    ttl = amqp_config.results_expire_in * 1000
    channel = await raw.channel()
    queue = await channel.declare_queue(
        record["TaskUUID"],
        durable=False,
        auto_delete=True,
        arguments={"x-message-ttl": ttl, "x-expires": ttl},
    )
    await channel.default_exchange.publish(
        aio_pika.Message(json.dumps(record).encode(), content_type="application/json"), queue.name
    )
    state = await backends[0].get_state(record["TaskUUID"])
    assert state is not None
    assert state.state is State.SUCCESS
    assert state.results == [TaskResult(type=r["Type"], value=r["Value"]) for r in record["Results"]]


async def test_a_finished_wait_unbinds_its_queue(
    backends: list[AMQPBackend], unique: str, cleanup: Cleanup
) -> None:
    writer, waiter = backends
    sig = Signature(name="add", uuid=f"task_{unique}")
    cleanup.signature(sig)
    await writer.set_state(TaskState.new(sig, State.PENDING))
    waiting = asyncio.create_task(waiter.wait_for_state(sig.uuid, timeout=30))
    await writer.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=result(7)))
    assert (await waiting).value == 7
    assert not waiter._waiters  # its binding is gone again


async def finish_and_try(backend: AMQPBackend, sig: Signature, value: int) -> bool:
    """What a worker does when a chord member succeeds (runner._member_done, up to the trigger)."""
    await backend.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=result(value)))
    if not await backend.group_completed(sig.group_uuid, sig.group_task_count):
        return False
    return await backend.trigger_chord(sig.group_uuid)


async def test_a_chord_sent_by_go_triggers_once_with_states_in_completion_order(
    backends: list[AMQPBackend], unique: str, cleanup: Cleanup
) -> None:
    """Go's AMQP backend keeps no GroupMeta: the group queue alone decides (the contract
    suite covers groups sent from Python)."""
    group = f"group_{unique}"
    members = [member(group, i, 8, unique, cleanup) for i in range(8)]
    outcomes = await asyncio.gather(*(finish_and_try(backends[i % 2], m, i) for i, m in enumerate(members)))
    assert outcomes.count(True) == 1
    winner = backends[outcomes.index(True) % 2]
    states = await winner.group_task_states(group, 8)
    assert sorted(s.value for s in states) == list(range(8))
    # Later attempts (a redelivered member finishing again) do not trigger it again.
    assert not await finish_and_try(backends[1], members[3], 3)


async def test_chord_waits_for_every_member_even_with_duplicates(
    backends: list[AMQPBackend], unique: str, cleanup: Cleanup
) -> None:
    group = f"group_{unique}"
    a, b, c = (member(group, i, 3, unique, cleanup) for i in range(3))
    await backends[0].init_group(group, [a.uuid, b.uuid, c.uuid])
    assert not await finish_and_try(backends[0], a, 1)
    # A redelivered member that ran twice makes three messages, but only two members.
    assert not await finish_and_try(backends[1], a, 1)
    assert not await finish_and_try(backends[0], b, 2)
    assert await finish_and_try(backends[1], c, 3)
    states = await backends[1].group_task_states(group, 3)
    assert [s.task_uuid for s in states] == [a.uuid, b.uuid, c.uuid]


async def test_another_results_expiry_is_a_clear_error(
    backends: list[AMQPBackend], amqp_config: Config, unique: str, cleanup: Cleanup
) -> None:
    sig = Signature(name="add", uuid=f"task_{unique}")
    cleanup.signature(sig)
    await backends[0].set_state(TaskState.new(sig, State.PENDING))
    other = AMQPBackend(amqp_config.model_copy(update={"results_expire_in": 60}))
    try:
        with pytest.raises(ConfigError, match="results_expire_in"):
            await other.set_state(TaskState.new(sig, State.STARTED))
    finally:
        await other.close()
