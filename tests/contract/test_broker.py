"""What every broker promises: claim and ack, hand-backs, crashes, prefetch, ETAs, dead
letters, inspection, and Go's bytes."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from machinery_aio import Signature
from machinery_aio.drivers.broker import Broker, Consumer, DeadLetter, Delivery
from tests.conftest import golden
from tests.contract.conftest import Kit
from tests.support.drivers import eventually, run_python

pytestmark = [pytest.mark.contract("broker"), pytest.mark.needs("consumes")]

DELAY = 2.0
"""Seconds of the hand-back and ETA delays."""
CLOCK_SLACK = 0.05
"""Clock granularity allowed between two clocks (wall and monotonic); not a timing threshold."""


async def fetch_all(consumer: Consumer, count: int, timeout: float = 30.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived (fails after ``timeout`` s: a hang guard)."""
    got: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            batch = await consumer.fetch(count - len(got))
            assert len(batch) <= count - len(got)
            got += batch
    return got


def uuids(items: list[Delivery] | list[Signature]) -> list[str]:
    return [i.uuid if isinstance(i, Signature) else Signature.from_json(i.body).uuid for i in items]


# -- claim and ack -------------------------------------------------------------------------------


async def test_fetched_messages_are_the_published_bytes_and_acked_ones_never_return(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(3)]
    for sig in sigs:
        await broker.publish(sig)
    assert all(s.routing_key == kit.queue for s in sigs)  # an empty routing key means the default queue
    consumer = kit.consumer(broker)
    got = await fetch_all(consumer, 3)
    assert [d.body for d in got] == [s.to_json() for s in sigs]
    assert all(d.queue == kit.queue for d in got)
    for delivery in got:
        await consumer.ack(delivery)
    await consumer.flush()
    # Settling an acked delivery again does nothing.
    await consumer.release(got[:1])
    await consumer.requeue(got[1])
    await consumer.close()

    again = kit.consumer(broker)
    assert await again.fetch(10) == []
    assert await broker.count_pending() == 0
    assert await broker.get_held_tasks() == []


async def test_a_closed_consumer_fetches_nothing(kit: Kit) -> None:
    broker = await kit.broker()
    await broker.publish(kit.sig(1))
    consumer = kit.consumer(broker)
    await consumer.close()
    assert await consumer.fetch(1) == []
    assert await broker.count_pending() == 1


async def test_a_cancelled_fetch_loses_nothing(kit: Kit) -> None:
    broker = await kit.broker()
    consumer = kit.consumer(broker)
    fetching = asyncio.create_task(consumer.fetch(1))
    await asyncio.sleep(0.1)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    sig = kit.sig(1)
    await broker.publish(sig)
    [delivery] = await fetch_all(consumer, 1)
    assert delivery.body == sig.to_json()
    await consumer.ack(delivery)


@pytest.mark.parametrize("vector", ["01_plain_task_int64_eta", "03_chord_member"])
async def test_gos_bytes_are_published_and_fetched_byte_for_byte(kit: Kit, vector: str) -> None:
    """A golden message from Go (its queue and UUID made this test's own)."""
    original = Signature.from_json(golden(vector))
    uuid = kit.uuid("task", vector)
    expected = (
        golden(vector)
        .replace(original.uuid.encode(), uuid.encode())
        .replace(b'"RoutingKey":"machinery_tasks"', f'"RoutingKey":"{kit.queue}"'.encode())
    )
    broker = await kit.broker()
    await broker.publish(Signature.from_json(expected))  # a past ETA (2025): delivered at once
    consumer = kit.consumer(broker)
    [delivery] = await fetch_all(consumer, 1)
    assert delivery.body == expected
    await consumer.ack(delivery)


async def test_publish_many_keeps_the_order(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(20)]
    await broker.publish_many(sigs)
    if broker.capabilities.list_pending:
        assert uuids(await broker.get_pending_tasks()) == uuids(sigs)
    consumer = kit.consumer(broker, prefetch=20)
    got = await fetch_all(consumer, 20)
    assert [d.body for d in got] == [s.to_json() for s in sigs]


# -- inspection ---------------------------------------------------------------------------------


async def test_pending_tasks_are_counted_listed_with_a_limit_and_purged(kit: Kit) -> None:
    broker = await kit.broker()
    other = kit.other_queue("other")
    sigs = [kit.sig(i) for i in range(5)]
    await broker.publish_many(sigs)
    await broker.publish(kit.sig(9, routing_key=other))
    assert await broker.count_pending() == 5
    assert await broker.count_pending(other) == 1
    if broker.capabilities.list_pending:
        for _ in range(2):  # listing takes nothing
            assert uuids(await broker.get_pending_tasks()) == uuids(sigs)
        assert uuids(await broker.get_pending_tasks(limit=2)) == uuids(sigs[:2])
        assert await broker.get_pending_tasks(limit=0) == []
        assert uuids(await broker.get_pending_tasks(other)) == [kit.uuid("task", 9)]
    assert await broker.purge() == 5
    assert await broker.purge() == 0
    assert await broker.count_pending() == 0
    assert await broker.get_pending_tasks() == []
    assert await broker.count_pending(other) == 1  # another queue is left alone
    never = kit.other_queue("never_used")
    assert await broker.get_pending_tasks(never) == []
    assert await broker.count_pending(never) == 0
    assert await broker.purge(never) == 0


# -- prefetch ------------------------------------------------------------------------------------


async def test_fetch_never_returns_more_than_prefetch_minus_unsettled(kit: Kit) -> None:
    broker = await kit.broker()
    await broker.publish_many([kit.sig(i) for i in range(5)])
    consumer = kit.consumer(broker, prefetch=2)
    held: list[Delivery] = []
    async with asyncio.timeout(30):
        while len(held) < 2:
            batch = await consumer.fetch(10)
            assert len(batch) <= 2 - len(held)
            held += batch
    assert await consumer.fetch(10) == []  # no room until something is settled
    await consumer.ack(held.pop(0))
    async with asyncio.timeout(30):
        while len(held) < 2:
            batch = await consumer.fetch(10)
            assert len(batch) <= 2 - len(held)
            held += batch
    await consumer.requeue(held.pop(0))
    [third] = await fetch_all(consumer, 1)
    assert await consumer.fetch(10) == []
    held.append(third)
    await consumer.release(held)
    assert len(await fetch_all(consumer, 2)) == 2


# -- hand-backs ------------------------------------------------------------------------------------


async def test_a_requeued_message_is_delivered_again_unchanged(kit: Kit) -> None:
    broker = await kit.broker()
    sig = kit.sig(1)
    await broker.publish(sig)
    consumer = kit.consumer(broker)
    [first] = await fetch_all(consumer, 1)
    await consumer.requeue(first)
    [again] = await fetch_all(consumer, 1)
    assert again.body == first.body == sig.to_json()
    await consumer.ack(again)


async def test_a_message_handed_back_with_a_delay_is_held_then_delivered_again(kit: Kit) -> None:
    broker = await kit.broker()
    sig = kit.sig(1)
    await broker.publish(sig)
    consumer = kit.consumer(broker, prefetch=1)
    [first] = await fetch_all(consumer, 1)
    handed_back = time.monotonic()
    await consumer.requeue(first, DELAY)
    # Held by the broker meanwhile, not pending and not in the consumer's prefetch.
    if broker.capabilities.list_held:
        assert uuids(await broker.get_held_tasks()) == [sig.uuid]
    assert await broker.count_pending() == 0
    second = kit.sig(2)
    await broker.publish(second)
    [other] = await fetch_all(consumer, 1)
    assert other.body == second.to_json()
    await consumer.ack(other)
    [again] = await fetch_all(consumer, 1)
    assert time.monotonic() - handed_back >= DELAY - CLOCK_SLACK
    assert again.body == first.body
    await consumer.ack(again)
    await consumer.flush()
    assert await eventually(lambda: _nothing_held(broker), "the hand-back to be settled")


async def _nothing_held(broker: Broker) -> bool:
    return await broker.get_held_tasks() == []


async def test_release_and_close_return_what_is_held(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(4)]
    await broker.publish_many(sigs)
    consumer = kit.consumer(broker)
    got = await fetch_all(consumer, 4)
    await consumer.release(got[:2])
    await consumer.release(got[:2])  # released already: nothing doubles
    back = await fetch_all(consumer, 2)  # delivered again, to whichever consumer fetches
    assert sorted(d.body for d in back) == sorted(d.body for d in got[:2])
    await consumer.close()
    await eventually(lambda: _pending(broker, 4), "the closed consumer's messages to be pending")
    if broker.capabilities.list_pending:
        assert sorted(uuids(await broker.get_pending_tasks())) == sorted(uuids(sigs))
    again = kit.consumer(broker)
    assert sorted(d.body for d in await fetch_all(again, 4)) == sorted(s.to_json() for s in sigs)
    assert await again.fetch(10) == []


async def _pending(broker: Broker, count: int) -> bool:
    return await broker.count_pending() == count


# -- crashes ----------------------------------------------------------------------------------------


@pytest.mark.needs("at_least_once")
async def test_messages_held_by_a_killed_consumer_are_delivered_again(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(3)]
    await broker.publish_many(sigs)
    code, out, err = await run_python(
        "-m", "tests.support.crash", "3", env={"CRASH_CONFIG": kit.config.model_dump_json()}
    )
    assert out.strip() == "holding 3", err
    assert code == -signal.SIGKILL, err
    consumer = kit.consumer(broker)
    back = await fetch_all(consumer, 3, timeout=60)
    assert sorted(d.body for d in back) == sorted(s.to_json() for s in sigs)
    for delivery in back:
        await consumer.ack(delivery)


# -- delays ----------------------------------------------------------------------------------------


async def test_a_future_eta_is_delivered_when_due_and_not_before(kit: Kit) -> None:
    broker = await kit.broker()
    consumer = kit.consumer(broker)
    eta = datetime.now(UTC) + timedelta(seconds=DELAY)
    later = kit.sig(1, eta=eta)
    now = kit.sig(2, eta=datetime.now(UTC) - timedelta(seconds=5))
    await broker.publish(later)
    await broker.publish(now)
    [first] = await fetch_all(consumer, 1)
    assert first.body == now.to_json()
    assert await broker.count_pending() == 0
    [second] = await fetch_all(consumer, 1)
    assert datetime.now(UTC) >= eta - timedelta(seconds=CLOCK_SLACK)
    assert second.body == later.to_json()


@pytest.mark.needs("list_delayed")
async def test_delayed_tasks_are_listed_earliest_first(kit: Kit) -> None:
    broker = await kit.broker()
    base = datetime.now(UTC) + timedelta(hours=1)
    sigs = [kit.sig(i, eta=base + timedelta(seconds=i)) for i in range(3)]
    for sig in (sigs[2], sigs[0], sigs[1]):
        await broker.publish(sig)
    assert await broker.count_pending() == 0
    assert uuids(await broker.get_delayed_tasks()) == uuids(sigs)
    assert uuids(await broker.get_delayed_tasks(limit=2)) == uuids(sigs[:2])


# -- dead letters ----------------------------------------------------------------------------------


async def test_a_dead_lettered_message_is_not_delivered_again(kit: Kit) -> None:
    broker = await kit.broker()
    await broker.publish(kit.sig(1))
    consumer = kit.consumer(broker)
    [delivery] = await fetch_all(consumer, 1)
    await consumer.dead_letter(delivery, "cannot be run")
    await consumer.close()
    again = kit.consumer(broker)
    assert await again.fetch(10) == []
    assert await broker.count_pending() == 0


@pytest.mark.needs("dead_letters")
async def test_dead_letters_are_kept_with_the_reason(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(2)]
    await broker.publish_many(sigs)
    consumer = kit.consumer(broker)
    got = await fetch_all(consumer, 2)
    for n, delivery in enumerate(got):
        await consumer.dead_letter(delivery, f"reason {n}")
    letters = await eventually(lambda: _letters(broker, 2), "two dead letters")
    assert [(letter.reason, letter.queue) for letter in letters] == [
        ("reason 0", kit.queue),
        ("reason 1", kit.queue),
    ]
    assert [letter.body.encode() for letter in letters] == [s.to_json() for s in sigs]
    assert all(letter.failed_at for letter in letters)
    assert len(await broker.get_dead_letters(limit=1)) == 1
    assert await broker.get_dead_letters(kit.other_queue("clean")) == []
    assert await broker.count_dead_letters() == 2
    assert await broker.count_dead_letters(kit.other_queue("clean")) == 0


@pytest.mark.needs("edit_dead_letters")
async def test_dead_letters_can_be_requeued_or_deleted_one_by_one_or_all(kit: Kit) -> None:
    broker = await kit.broker()
    sigs = [kit.sig(i) for i in range(5)]
    await broker.publish_many(sigs)
    consumer = kit.consumer(broker)
    for delivery in await fetch_all(consumer, 5):
        await consumer.dead_letter(delivery, "set aside")
    await consumer.close()  # a push broker would hand it what is requeued
    letters = await eventually(lambda: _letters(broker, 5), "five dead letters")
    assert await broker.requeue_dead_letters(letters=[letters[1]]) == 1
    assert await broker.requeue_dead_letters(letters=[letters[1]]) == 0  # already gone
    assert await broker.delete_dead_letters(letters=[letters[0]]) == 1
    assert await broker.get_dead_letters() == letters[2:]
    again = kit.consumer(broker)
    [back] = await fetch_all(again, 1)
    assert back.body == sigs[1].to_json()  # the bytes as they were
    await again.ack(back)
    await again.close()
    assert await broker.requeue_dead_letters() == 3
    assert await broker.get_dead_letters() == []
    third = kit.consumer(broker)
    got = await fetch_all(third, 3)
    assert [d.body for d in got] == [s.to_json() for s in sigs[2:]]
    for delivery in got:
        await third.dead_letter(delivery, "again")
    await eventually(lambda: _letters(broker, 3), "three dead letters")
    assert await broker.delete_dead_letters() == 3
    assert await broker.get_dead_letters() == []
    await third.close()


async def _letters(broker: Broker, count: int) -> list[DeadLetter]:
    letters = await broker.get_dead_letters()
    return letters if len(letters) == count else []
