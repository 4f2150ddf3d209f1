"""The embedded memory:// broker, backend and lock: acks, redelivery, ETAs, atomic chords."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from machinery_aio import Arg, Config, GroupMeta, Signature, State, TaskResult, TaskState
from machinery_aio.drivers.backend import ResultBackend
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.drivers.memory.lock import MemoryLock
from machinery_aio.drivers.null.backend import NullBackend
from machinery_aio.gotime import ZERO_TIME

CLOCK_SLACK = 0.001
"""Clock granularity allowed when comparing wall-clock times (not a timing threshold)."""


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


@pytest.fixture
def backend(config: Config) -> MemoryBackend:
    return MemoryBackend(config)


def sig(name: str = "add", *values: int, **fields: object) -> Signature:
    return Signature(
        uuid=f"task_{name}_{'_'.join(map(str, values))}",
        name=name,
        args=[Arg(type="int64", value=v) for v in values],
        **fields,
    )


# -- broker ---------------------------------------------------------------------------------


def test_capabilities_describe_an_in_process_at_least_once_broker() -> None:
    caps = MemoryBroker.capabilities
    assert caps.at_least_once
    assert caps.delayed_delivery
    assert caps.dead_letters
    assert caps.inspect_pending
    assert not caps.persistent


async def test_publish_fills_the_routing_key_and_keeps_gos_bytes(
    broker: MemoryBroker, config: Config
) -> None:
    s = sig("add", 1, 2)
    await broker.publish(s)
    assert s.routing_key == config.default_queue
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    [delivery] = await consumer.fetch(10, 1.0)
    assert delivery.body == s.to_json()
    assert delivery.queue == config.default_queue
    await consumer.ack(delivery)
    await consumer.close()


async def test_fetch_is_fifo_and_honours_max_count(broker: MemoryBroker, config: Config) -> None:
    await broker.publish_many([sig("t", i) for i in range(5)])
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    first = await consumer.fetch(3, 1.0)
    rest = await consumer.fetch(10, 1.0)
    names = [Signature.from_json(d.body).python_args()[0] for d in first + rest]
    assert names == [0, 1, 2, 3, 4]
    assert len(first) == 3
    for d in first + rest:
        await consumer.ack(d)
    await consumer.close()
    assert await broker.get_pending_tasks() == []


async def test_routing_key_picks_the_queue(broker: MemoryBroker, unique: str) -> None:
    await broker.publish(sig("a", 1, routing_key=f"{unique}_other"))
    assert await broker.get_pending_tasks() == []
    [pending] = await broker.get_pending_tasks(f"{unique}_other")
    assert pending.name == "a"


async def test_empty_fetch_times_out_with_nothing(broker: MemoryBroker, config: Config) -> None:
    consumer = broker.consumer(config.default_queue, prefetch=1, tag="t")
    assert await consumer.fetch(1, 0.05) == []
    await consumer.close()


async def test_waiting_fetch_wakes_on_publish(broker: MemoryBroker, config: Config) -> None:
    consumer = broker.consumer(config.default_queue, prefetch=1, tag="t")
    fetching = asyncio.create_task(consumer.fetch(1, 30.0))
    await asyncio.sleep(0)
    assert not fetching.done()
    await broker.publish(sig("wake", 1))
    async with asyncio.timeout(10):
        [delivery] = await fetching
    assert Signature.from_json(delivery.body).name == "wake"
    await consumer.ack(delivery)
    await consumer.close()


async def test_close_returns_unacked_deliveries_to_the_head_of_the_queue(
    broker: MemoryBroker, config: Config
) -> None:
    await broker.publish_many([sig("t", i) for i in range(4)])
    first = broker.consumer(config.default_queue, prefetch=10, tag="a")
    got = await first.fetch(3, 1.0)
    await first.ack(got[0])
    await first.close()
    pending = await broker.get_pending_tasks()
    assert [p.python_args()[0] for p in pending] == [1, 2, 3]
    second = broker.consumer(config.default_queue, prefetch=10, tag="b")
    again = await second.fetch(10, 1.0)
    assert [d.body for d in again[:2]] == [d.body for d in got[1:]]  # bytes unchanged
    await second.close()


async def test_release_hands_back_in_order(broker: MemoryBroker, config: Config) -> None:
    await broker.publish_many([sig("t", i) for i in range(3)])
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    got = await consumer.fetch(10, 1.0)
    await consumer.release(got)
    assert [p.python_args()[0] for p in await broker.get_pending_tasks()] == [0, 1, 2]
    await consumer.release(got)  # already released: nothing doubles
    await consumer.close()
    assert len(await broker.get_pending_tasks()) == 3


async def test_acked_messages_are_not_redelivered(broker: MemoryBroker, config: Config) -> None:
    await broker.publish(sig("once", 1))
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    [delivery] = await consumer.fetch(1, 1.0)
    await consumer.ack(delivery)
    await consumer.requeue(delivery)  # too late: it was acked
    await consumer.close()
    assert await broker.get_pending_tasks() == []
    assert await broker.get_delayed_tasks() == []


async def test_requeue_with_and_without_delay(broker: MemoryBroker, config: Config) -> None:
    await broker.publish_many([sig("now", 1), sig("later", 2)])
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    now, later = await consumer.fetch(10, 1.0)
    await consumer.requeue(now, 0.0)
    requeued_at = time.time()
    await consumer.requeue(later, 0.3)
    [again] = await consumer.fetch(10, 1.0)
    assert again.body == now.body
    [delayed] = await broker.get_delayed_tasks()
    assert delayed.name == "later"
    await consumer.ack(again)
    [last] = await consumer.fetch(1, 30.0)
    assert time.time() >= requeued_at + 0.3 - CLOCK_SLACK
    assert last.body == later.body
    await consumer.ack(last)
    await consumer.close()


async def test_dead_letters_keep_the_bytes_and_reason(broker: MemoryBroker, config: Config) -> None:
    await broker.publish(sig("bad", 1))
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    [delivery] = await consumer.fetch(1, 1.0)
    await consumer.dead_letter(delivery, "cannot be run")
    await consumer.close()
    [letter] = await broker.get_dead_letters()
    assert letter.reason == "cannot be run"
    assert letter.body.encode() == delivery.body
    assert letter.queue == config.default_queue
    assert datetime.fromisoformat(letter.failed_at).tzinfo is not None
    assert await broker.get_pending_tasks() == []
    assert await broker.get_dead_letters("other") == []


async def test_future_eta_is_held_until_due(broker: MemoryBroker, config: Config) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=0.3)
    await broker.publish(sig("later", 1, eta=eta))
    await broker.publish(sig("now", 2, eta=datetime.now(UTC) - timedelta(seconds=5)))
    assert [p.name for p in await broker.get_pending_tasks()] == ["now"]
    assert [d.name for d in await broker.get_delayed_tasks()] == ["later"]
    consumer = broker.consumer(config.default_queue, prefetch=10, tag="t")
    [first] = await consumer.fetch(10, 1.0)
    assert Signature.from_json(first.body).name == "now"
    [second] = await consumer.fetch(10, 30.0)
    assert datetime.now(UTC) >= eta - timedelta(seconds=CLOCK_SLACK)
    assert Signature.from_json(second.body).name == "later"
    for d in (first, second):
        await consumer.ack(d)
    await consumer.close()


async def test_delayed_tasks_list_earliest_first(broker: MemoryBroker) -> None:
    base = datetime.now(UTC) + timedelta(hours=1)
    await broker.publish(sig("c", 3, eta=base + timedelta(seconds=3)))
    await broker.publish(sig("a", 1, eta=base + timedelta(seconds=1)))
    await broker.publish(sig("b", 2, eta=base + timedelta(seconds=2)))
    assert [d.name for d in await broker.get_delayed_tasks()] == ["a", "b", "c"]


async def test_close_wakes_a_waiting_fetch(broker: MemoryBroker, config: Config) -> None:
    consumer = broker.consumer(config.default_queue, prefetch=1, tag="t")
    fetching = asyncio.create_task(consumer.fetch(1, 30.0))
    await asyncio.sleep(0)
    await consumer.close()
    async with asyncio.timeout(10):
        assert await fetching == []


async def test_purge(broker: MemoryBroker) -> None:
    await broker.publish_many([sig("t", i) for i in range(3)])
    assert await broker.purge() == 3
    assert await broker.purge() == 0
    assert await broker.get_pending_tasks() == []


async def test_named_stores_are_separate_and_shared_by_name(config: Config, unique: str) -> None:
    a1 = MemoryBroker(config, f"memory://{unique}-a")
    a2 = MemoryBroker(config, f"memory://{unique}-a")
    b = MemoryBroker(config, f"memory://{unique}-b")
    await a1.publish(sig("x", 1))
    assert len(await a2.get_pending_tasks()) == 1
    assert await b.get_pending_tasks() == []


# -- backend -----------------------------------------------------------------------------------


async def test_later_states_carry_task_name_and_created_at(backend: MemoryBackend) -> None:
    s = sig("add", 1)
    await backend.set_state_pending(s)
    pending = await backend.get_state(s.uuid)
    assert pending is not None
    assert pending.created_at != ZERO_TIME
    for state in (State.RECEIVED, State.STARTED, State.SUCCESS):
        bare = TaskState(task_uuid=s.uuid, state=state)  # as Go's constructors: no name, zero time
        await backend.set_state(bare)
        stored = await backend.get_state(s.uuid)
        assert stored is not None
        assert (stored.state, stored.task_name) == (state, "add")
        assert stored.created_at == pending.created_at
        assert stored.to_json().startswith(b'{"TaskUUID":"task_add_1","TaskName":"add","State"')


async def test_state_helpers_write_each_state(backend: MemoryBackend) -> None:
    s = sig("h", 1)
    await backend.set_state_pending(s)
    await backend.set_state_received(s)
    assert (await backend.get_state(s.uuid)).state is State.RECEIVED  # type: ignore[union-attr]
    await backend.set_state_started(s)
    await backend.set_state_retry(s)
    assert (await backend.get_state(s.uuid)).state is State.RETRY  # type: ignore[union-attr]
    await backend.set_state_success(s, [TaskResult(type="int64", value=2)])
    assert (await backend.get_state(s.uuid)).value == 2  # type: ignore[union-attr]
    await backend.set_state_failure(s, "boom")
    failed = await backend.get_state(s.uuid)
    assert failed is not None
    assert failed.error == "boom"
    assert failed.is_failure()


async def test_unknown_state_is_none(backend: MemoryBackend) -> None:
    assert await backend.get_state("task_unknown") is None
    assert await backend.get_group_meta("group_unknown") is None


async def test_records_expire(unique: str) -> None:
    backend = MemoryBackend(Config(result_backend=f"memory://{unique}", results_expire_in=1))
    assert backend.expires_in == 1
    s = sig("x", 1)
    await backend.set_state_pending(s)
    await backend.init_group("group_x", [s.uuid])
    assert await backend.get_state(s.uuid) is not None
    await asyncio.sleep(1.05)
    assert await backend.get_state(s.uuid) is None
    assert await backend.get_group_meta("group_x") is None


def test_zero_expiry_means_gos_default_of_an_hour(unique: str) -> None:
    assert MemoryBackend(Config(results_expire_in=0)).expires_in == 3600
    assert MemoryBackend(Config()).expires_in == 3600


async def test_groups_complete_when_every_member_is_final(backend: MemoryBackend) -> None:
    members = [sig("m", i) for i in range(3)]
    await backend.init_group("group_g", [m.uuid for m in members])
    await backend.set_states([TaskState.new(m, State.PENDING) for m in members])
    meta = await backend.get_group_meta("group_g")
    assert isinstance(meta, GroupMeta)
    assert meta.task_uuids == [m.uuid for m in members]
    assert meta.created_at != ZERO_TIME
    assert not meta.chord_triggered
    assert not await backend.group_completed("group_g", 3)
    await backend.set_state_success(members[2], [TaskResult(type="int64", value=2)])
    await backend.set_state_failure(members[0], "boom")
    assert not await backend.group_completed("group_g", 3)
    await backend.set_state_success(members[1], [TaskResult(type="int64", value=1)])
    assert await backend.group_completed("group_g", 3)
    states = await backend.group_task_states("group_g", 3)
    assert [s.task_uuid for s in states] == [m.uuid for m in members]  # group order
    assert [s.state for s in states] == [State.FAILURE, State.SUCCESS, State.SUCCESS]
    assert not await backend.group_completed("group_unknown", 3)


async def test_group_task_states_reports_what_is_missing(backend: MemoryBackend) -> None:
    with pytest.raises(LookupError, match="group_none has no metadata"):
        await backend.group_task_states("group_none", 1)
    await backend.init_group("group_h", ["task_a", "task_b"])
    await backend.set_state_pending(Signature(uuid="task_a", name="x"))
    with pytest.raises(LookupError, match="no state for task_b"):
        await backend.group_task_states("group_h", 2)


async def test_trigger_chord_is_true_for_exactly_one_of_many(backend: MemoryBackend) -> None:
    await backend.init_group("group_c", ["task_1", "task_2"])
    results = await asyncio.gather(*(backend.trigger_chord("group_c") for _ in range(200)))
    assert results.count(True) == 1
    meta = await backend.get_group_meta("group_c")
    assert meta is not None
    assert meta.chord_triggered
    assert await backend.trigger_chord("group_c") is False
    assert await backend.trigger_chord("group_unknown") is False


async def test_wait_for_state_wakes_on_the_final_state(backend: MemoryBackend) -> None:
    s = sig("w", 1)
    await backend.set_state_pending(s)
    waiters = [asyncio.create_task(backend.wait_for_state(s.uuid, 30.0)) for _ in range(3)]
    await asyncio.sleep(0)
    await backend.set_state_started(s)
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)  # STARTED is not final
    await backend.set_state_success(s, [TaskResult(type="string", value="done")])
    async with asyncio.timeout(10):
        states = await asyncio.gather(*waiters)
    assert all(st.value == "done" for st in states)


async def test_wait_for_state_returns_at_once_when_final_and_times_out_clearly(
    backend: MemoryBackend,
) -> None:
    s = sig("f", 1)
    await backend.set_state_failure(s, "boom")
    assert (await backend.wait_for_state(s.uuid, 0)).error == "boom"
    with pytest.raises(TimeoutError, match=r"task task_never did not complete within 0\.05 s"):
        await backend.wait_for_state("task_never", 0.05)


async def test_base_class_polling_wait(config: Config) -> None:
    class PollingBackend(MemoryBackend):
        wait_for_state = ResultBackend.wait_for_state

    backend = PollingBackend(config)
    s = sig("p", 1)
    waiter = asyncio.create_task(backend.wait_for_state(s.uuid, 30.0, interval=0.01))
    await backend.set_state_started(s)
    await asyncio.sleep(0.03)
    assert not waiter.done()
    await backend.set_state_success(s, [])
    async with asyncio.timeout(10):
        assert (await waiter).is_success()
    with pytest.raises(TimeoutError, match=r"did not complete within 0\.02 s"):
        await backend.wait_for_state("task_never", 0.02, interval=0.01)


async def test_backend_purge(backend: MemoryBackend) -> None:
    s = sig("x", 1)
    await backend.set_state_pending(s)
    await backend.init_group("group_p", [s.uuid])
    await backend.purge_state(s.uuid)
    await backend.purge_group_meta("group_p")
    assert await backend.get_state(s.uuid) is None
    assert await backend.get_group_meta("group_p") is None


async def test_null_backend_stores_nothing() -> None:
    backend = NullBackend(Config(result_backend="null://"))
    s = sig("x", 1)
    await backend.set_state_pending(s)
    await backend.set_states([TaskState.new(s, State.SUCCESS)])
    await backend.init_group("group_n", [s.uuid])
    assert await backend.get_state(s.uuid) is None
    assert await backend.get_group_meta("group_n") is None
    assert await backend.group_completed("group_n", 1) is True
    assert await backend.trigger_chord("group_n") is True
    assert await backend.group_task_states("group_n", 1) == []
    with pytest.raises(RuntimeError, match="stores no results"):
        await backend.wait_for_state(s.uuid, 1.0)


# -- lock ---------------------------------------------------------------------------------------


async def test_lock_is_exclusive_until_released(config: Config) -> None:
    lock = MemoryLock(config)
    token = await lock.acquire("k", 30)
    assert token
    assert await lock.acquire("k", 30) is None
    assert await MemoryLock(config).acquire("k", 30) is None  # same name, same store
    assert await lock.release("k", "not-the-token") is False
    assert await lock.release("k", token) is True
    assert await lock.release("k", token) is False
    assert await lock.acquire("k", 30, value="mine") == "mine"


async def test_lock_expires(config: Config) -> None:
    lock = MemoryLock(config)
    assert await lock.acquire("k", 0.05)
    assert await lock.acquire("k", 0.05) is None
    await asyncio.sleep(0.06)
    assert await lock.acquire("k", 30)


async def test_lock_retries(config: Config) -> None:
    lock = MemoryLock(config)
    token = await lock.acquire("k", 30)
    assert token
    assert await lock.acquire_with_retries("k", 30, retries=2, interval=0.01) is None

    async def release_soon() -> None:
        await asyncio.sleep(0.02)
        await lock.release("k", token)

    releasing = asyncio.create_task(release_soon())
    assert await lock.acquire_with_retries("k", 30, retries=200, interval=0.01)
    await releasing


async def test_locks_of_other_names_are_independent(config: Config, unique: str) -> None:
    assert await MemoryLock(config, f"memory://{unique}-1").acquire("k", 30)
    assert await MemoryLock(config, f"memory://{unique}-2").acquire("k", 30)
    assert MemoryLock(Config()).url == "memory://"
