"""What is particular to memory://: in-process stores shared by name, raw pushes, the order
of hand-backs, and the interface defaults it inherits. The rest is in tests/contract/."""

from __future__ import annotations

import asyncio

import pytest

from machinery_aio import Arg, Config, Signature, State, TaskState
from machinery_aio.drivers import create_backend, create_broker, create_lock, lock_url
from machinery_aio.drivers.backend import ResultBackend
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.drivers.memory.lock import MemoryLock


@pytest.fixture
def config(unique: str) -> Config:
    return Config(
        broker=f"memory://{unique}",
        result_backend=f"memory://{unique}",
        lock=f"memory://{unique}",
        default_queue=f"{unique}_q",
    )


@pytest.fixture
def broker(config: Config) -> MemoryBroker:
    return MemoryBroker(config)


def sig(n: int) -> Signature:
    return Signature(uuid=f"task_{n}", name="add", args=[Arg(type="int64", value=n)])


def test_capabilities_say_in_process_and_not_at_least_once(config: Config) -> None:
    assert create_broker(config).capabilities.in_process
    assert not create_broker(config).capabilities.at_least_once  # nothing survives the process
    assert create_backend(config).capabilities.in_process
    assert create_backend(config).capabilities.stores_results
    assert create_lock(config).capabilities.in_process
    assert lock_url(Config()) == "memory://"  # no lock that works across processes: memory


async def test_stores_are_shared_by_name_and_separate_between_names(config: Config, unique: str) -> None:
    a1, a2 = MemoryBroker(config, f"memory://{unique}-a"), MemoryBroker(config, f"memory://{unique}-a")
    b = MemoryBroker(config, f"memory://{unique}-b")
    await a1.publish(sig(1))
    assert len(await a2.get_pending_tasks()) == 1
    assert await b.get_pending_tasks() == []

    writer = MemoryBackend(config, f"memory://{unique}-a")
    await writer.set_state(TaskState.new(sig(1), State.PENDING))
    assert await MemoryBackend(config, f"memory://{unique}-a").get_state("task_1") is not None
    assert await MemoryBackend(config, f"memory://{unique}-b").get_state("task_1") is None

    assert await MemoryLock(config, f"memory://{unique}-a").acquire("k", 30)
    assert await MemoryLock(config, f"memory://{unique}-a").acquire("k", 30) is None
    assert await MemoryLock(config, f"memory://{unique}-b").acquire("k", 30)
    assert MemoryLock(Config()).url == "memory://"


async def test_push_raw_delivers_the_bytes_as_pushed(broker: MemoryBroker, config: Config) -> None:
    body = b'{"UUID":"task_raw","Name":"add"}  not even valid'
    await broker.push_raw(config.default_queue, body)
    consumer = broker.consumer(config.default_queue, prefetch=1, tag="t")
    [delivery] = await consumer.fetch(1)
    assert delivery.body == body
    assert await broker.get_pending_tasks() == []
    assert await broker.get_held_tasks() == []  # held, but not a task: not listed
    await consumer.ack(delivery)
    await consumer.close()


async def test_held_deliveries_are_listed_and_go_back_to_the_head_in_order(
    broker: MemoryBroker, config: Config
) -> None:
    await broker.publish_many([sig(i) for i in range(4)])
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    got = await consumer.fetch(3)
    assert [s.uuid for s in await broker.get_held_tasks()] == ["task_0", "task_1", "task_2"]
    await consumer.release(got[1:])
    assert [s.uuid for s in await broker.get_pending_tasks()] == ["task_1", "task_2", "task_3"]
    await consumer.close()
    assert [s.uuid for s in await broker.get_pending_tasks()] == ["task_0", "task_1", "task_2", "task_3"]


async def test_close_wakes_a_waiting_fetch(broker: MemoryBroker, config: Config) -> None:
    consumer = broker.consumer(config.default_queue, prefetch=1, tag="t")
    fetching = asyncio.create_task(consumer.fetch(1))
    await asyncio.sleep(0)
    await consumer.close()
    async with asyncio.timeout(10):
        assert await fetching == []


def test_zero_expiry_means_gos_default_of_an_hour() -> None:
    assert MemoryBackend(Config(results_expire_in=0)).expires_in == 3600
    assert MemoryBackend(Config()).expires_in == 3600


async def test_the_interfaces_polling_wait_for_backends_that_cannot_notify(config: Config) -> None:
    class PollingBackend(MemoryBackend):
        wait_for_state = ResultBackend.wait_for_state

    backend = PollingBackend(config)
    s = sig(1)
    waiter = asyncio.create_task(backend.wait_for_state(s.uuid, 30.0, interval=0.01))
    await backend.set_state(TaskState.new(s, State.STARTED))
    await asyncio.sleep(0.03)
    assert not waiter.done()
    await backend.set_state(TaskState.new(s, State.SUCCESS, results=[]))
    async with asyncio.timeout(10):
        assert (await waiter).is_success()
    with pytest.raises(TimeoutError, match=r"task task_never did not complete within 0\.02 s"):
        await backend.wait_for_state("task_never", 0.02, interval=0.01)
