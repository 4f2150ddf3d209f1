"""The Redis broker on a single Redis and on the cluster: Go's layout, reliable claims."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from machinery_aio import Config, Signature
from machinery_aio.drivers.redis.broker import RedisBroker
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.consumer import RedisConsumer
from machinery_aio.drivers.redis.keys import QueueKeys, slot_prefix
from machinery_aio.gotime import parse_time, unix_nanos
from tests.conftest import golden
from tests.drivers.redis.conftest import make_config
from tests.support.redis import eventually, sig


@pytest.fixture
async def broker(redis_config: Config, raw: RedisClient) -> Any:
    redis_config.redis.normal_tasks_poll_period = 100  # an empty fetch waits 0.1 s
    made = RedisBroker(redis_config)
    yield made
    await made.close()


def consumer_of(
    broker: RedisBroker, queue: str | None = None, tag: str = "t", prefetch: int = 10
) -> RedisConsumer:
    made = broker.consumer(queue or broker.config.default_queue, prefetch=prefetch, tag=tag)
    assert isinstance(made, RedisConsumer)
    return made


def test_slot_prefix_puts_keys_in_the_queue_slot() -> None:
    from redis.crc import key_slot

    assert slot_prefix("machinery_tasks") == "{machinery_tasks}"
    assert key_slot(b"{machinery_tasks}:processing:w1") == key_slot(b"machinery_tasks")
    assert slot_prefix("{jobs}.high") == "{jobs}.high"
    assert key_slot(b"{jobs}.high:dead") == key_slot(b"{jobs}.high")
    assert slot_prefix("a{}b") == "{a{}b}"  # an empty tag is no tag


# -- publishing: Go's layout, byte for byte ------------------------------------------------


async def test_publish_rpushes_go_shaped_json(broker: RedisBroker, raw: RedisClient) -> None:
    queue = broker.config.default_queue
    expected = golden("01_plain_task_int64_eta").replace(
        b'"RoutingKey":"machinery_tasks"', f'"RoutingKey":"{queue}"'.encode()
    )
    message = Signature.from_json(golden("01_plain_task_int64_eta"))
    message.routing_key = ""  # filled in with the default queue, as Go does
    message.uuid = f"task_{queue}"
    expected = expected.replace(b"task_baec41c6-2eb7-429f-b1a2-1a9e5d5919ca", f"task_{queue}".encode())
    await broker.publish(message)  # its ETA (2025) has passed: straight to the list
    assert await raw.lrange(queue, 0, -1) == [expected]


async def test_future_eta_goes_to_the_delayed_zset_in_unix_nanoseconds(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    eta = parse_time("2999-01-15T10:30:00.123456789Z")
    message = sig(ids(1), "add", 1, 2, eta=eta)
    await broker.publish(message)
    key = broker.config.redis.delayed_tasks_key
    members = await raw.zrange(key, 0, -1, withscores=True)
    assert len(members) == 1
    body, score = members[0]
    assert body == message.to_json()
    assert json.loads(body)["RoutingKey"] == broker.config.default_queue
    assert json.loads(body)["ETA"] == "2999-01-15T10:30:00.123456789Z"
    assert score == float(unix_nanos(eta))
    assert await raw.llen(broker.config.default_queue) == 0
    assert [s.uuid for s in await broker.get_delayed_tasks()] == [ids(1)]


async def test_publish_many_keeps_order_per_queue(
    broker: RedisBroker, raw: RedisClient, unique: str, ids: Any
) -> None:
    other = f"{unique}_other"
    sigs = [sig(ids(i), "t", i, routing_key=other if i % 3 == 0 else "") for i in range(30)]
    await broker.publish_many(sigs)
    main = [json.loads(b)["UUID"] for b in await raw.lrange(broker.config.default_queue, 0, -1)]
    side = [json.loads(b)["UUID"] for b in await raw.lrange(other, 0, -1)]
    assert main == [ids(i) for i in range(30) if i % 3]
    assert side == [ids(i) for i in range(30) if i % 3 == 0]


# -- claiming and settling -------------------------------------------------------------------


async def test_fetch_claims_a_batch_into_the_processing_list(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    queue = broker.config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(8)])
    consumer = consumer_of(broker)
    got = await consumer.fetch(5)
    assert [Signature.from_json(d.body).uuid for d in got] == [ids(i) for i in range(5)]
    assert await raw.llen(queue) == 3
    assert await raw.lrange(consumer.processing, 0, -1) == [d.body for d in got]
    assert await raw.zscore(QueueKeys(queue).consumers, consumer.consumer_id) is not None
    for delivery in got[:2]:
        await consumer.ack(delivery)
    await consumer.flush()
    assert await raw.lrange(consumer.processing, 0, -1) == [d.body for d in got[2:]]
    await consumer.close()
    # close hands back what it still held, at the head of the queue, in order
    remaining = [Signature.from_json(b).uuid for b in await raw.lrange(queue, 0, -1)]
    assert remaining == [ids(i) for i in (2, 3, 4, 5, 6, 7)]
    assert not await raw.exists(consumer.processing)
    # marked expired: the next live consumer sweeps its (empty) list once more and forgets it
    assert await raw.zscore(QueueKeys(queue).consumers, consumer.consumer_id) == 0
    other = consumer_of(broker, tag="other")
    await other.beat()
    assert await raw.zscore(QueueKeys(queue).consumers, consumer.consumer_id) is None
    await other.close()


async def test_acks_go_in_the_background_and_close_waits_for_them(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    queue = broker.config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(20)])
    consumer = consumer_of(broker, prefetch=20)
    got = await consumer.fetch(20)
    assert len(got) == 20
    for delivery in got:
        await consumer.ack(delivery)  # queued; the claims go in one command
    await consumer.close()
    assert not await raw.exists(consumer.processing)
    assert await raw.llen(queue) == 0  # acked, so nothing was handed back


async def test_a_failed_ack_keeps_the_claim_and_is_sent_again(
    broker: RedisBroker, raw: RedisClient, ids: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from machinery_aio.drivers.redis.queue_scripts import ACK

    await broker.publish_many([sig(ids(i), "t", i) for i in range(3)])
    consumer = consumer_of(broker)
    got = await consumer.fetch(3)
    real = broker.batcher.script

    async def broken(script: Any, keys: Any, args: Any = ()) -> Any:
        if script is ACK:
            raise RedisConnectionError("connection lost")
        return await real(script, keys, args)

    monkeypatch.setattr(broker.batcher, "script", broken)
    await consumer.ack(got[0])
    with pytest.raises(ConnectionError, match="1 acks could not be sent"):
        await consumer.flush()
    assert await raw.lrange(consumer.processing, 0, -1) == [d.body for d in got]  # still claimed
    await consumer._check_untracked()
    assert not consumer._reconcile  # a pending ack is not an untracked claim
    monkeypatch.setattr(broker.batcher, "script", real)
    assert await consumer.fetch(1) == []  # the next fetch sends the ack again
    await consumer.flush()
    assert await raw.lrange(consumer.processing, 0, -1) == [d.body for d in got[1:]]
    for delivery in got[1:]:
        await consumer.ack(delivery)
    await consumer.close()
    assert await raw.llen(broker.config.default_queue) == 0


async def test_release_requeue_and_dead_letter(broker: RedisBroker, raw: RedisClient, ids: Any) -> None:
    queue = broker.config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(4)])
    consumer = consumer_of(broker)
    d0, d1, d2, d3 = await consumer.fetch(4)
    await consumer.release([d1, d2])  # back to the head, in order
    assert [Signature.from_json(b).uuid for b in await raw.lrange(queue, 0, -1)] == [ids(1), ids(2)]
    await consumer.requeue(d0)  # back to the tail, as Go does for unregistered tasks
    assert [Signature.from_json(b).uuid for b in await raw.lrange(queue, 0, -1)] == [ids(1), ids(2), ids(0)]
    await consumer.dead_letter(d3, "it is broken")
    assert await raw.llen(consumer.processing) == 0
    letters = await broker.get_dead_letters()
    assert len(letters) == 1
    assert letters[0].reason == "it is broken"
    assert letters[0].queue == queue
    assert letters[0].body == d3.body.decode()
    assert letters[0].failed_at.endswith("Z")
    assert await broker.purge_dead_letters() == 1
    assert await broker.get_dead_letters() == []
    await consumer.close()


async def test_a_hand_back_with_a_delay_waits_in_the_delayed_set_not_in_the_claim(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    queue = broker.config.default_queue
    delayed = broker.config.redis.delayed_tasks_key
    await broker.publish(sig(ids(1), "t"))
    consumer = consumer_of(broker)
    [delivery] = await consumer.fetch(1)
    await consumer.requeue(delivery, 2.0)
    assert await raw.llen(consumer.processing) == 0  # nothing stays claimed
    assert await raw.zrange(delayed, 0, -1) == [delivery.body]  # bytes unchanged
    assert [s.uuid for s in await broker.get_held_tasks()] == [ids(1)]
    assert await raw.lrange(queue, 0, -1) == []
    assert await eventually(lambda: raw.lrange(queue, 0, -1)) == [delivery.body]  # the mover
    assert await raw.zcard(delayed) == 0
    await consumer.close()


async def test_hand_backs_take_no_prefetch_and_no_claim_however_many(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    """A worker handing back messages no worker there knows does not hoard them: each goes to
    the delayed set, so the consumer never holds more than its prefetch."""
    await broker.publish_many([sig(ids(i), "unknown") for i in range(40)])
    consumer = consumer_of(broker, prefetch=4)
    handed_back = 0
    while handed_back < 40:
        batch = await consumer.fetch(10)
        assert 0 < len(batch) <= 4
        assert await raw.llen(consumer.processing) <= 4
        for delivery in batch:
            await consumer.requeue(delivery, 30.0)
        handed_back += len(batch)
    assert await raw.llen(consumer.processing) == 0
    assert await raw.zcard(broker.config.redis.delayed_tasks_key) == 40
    assert len(await broker.get_held_tasks(limit=25)) == 25
    await consumer.close()


async def test_a_hand_back_routed_elsewhere_keeps_its_claim_until_the_delay_is_over(
    broker: RedisBroker, raw: RedisClient, ids: Any, unique: str
) -> None:
    """Pushed to a queue its RoutingKey does not name, a message handed back stays claimed here
    (the delayed set would send it to the RoutingKey's queue instead) and comes back here."""
    queue = broker.config.default_queue
    body = sig(ids(1), "t", routing_key=f"{unique}_elsewhere").to_json()
    await raw.rpush(queue, body)
    consumer = consumer_of(broker)
    [delivery] = await consumer.fetch(1)
    await consumer.requeue(delivery, 1.0)
    assert await raw.lrange(consumer.processing, 0, -1) == [body]
    assert await raw.zcard(broker.config.redis.delayed_tasks_key) == 0
    assert await eventually(lambda: raw.lrange(queue, 0, -1)) == [body]
    assert await raw.llen(consumer.processing) == 0
    await consumer.close()


async def test_a_dead_consumers_messages_go_back_to_the_head_of_the_queue(
    redis_url: str, unique: str, raw: RedisClient, ids: Any
) -> None:
    config = make_config(redis_url, unique, consumer_timeout=3.0)
    broker = RedisBroker(config)
    queue = config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(5)])
    dead = consumer_of(broker, tag="dead")
    claimed = await dead.fetch(3)
    assert len(claimed) == 3
    # The process "dies": no more heartbeats, nothing acked or closed.
    assert dead._heartbeat is not None
    dead._heartbeat.cancel()
    alive = consumer_of(broker, tag="alive")
    await alive.beat()
    assert await raw.llen(dead.processing) == 3  # not yet: its heartbeat has not expired
    assert await eventually(alive.beat, timeout=20, interval=0.2) == 3
    assert not await raw.exists(dead.processing)
    uuids = [Signature.from_json(b).uuid for b in await raw.lrange(queue, 0, -1)]
    assert uuids == [ids(i) for i in range(5)]
    await alive.close()
    await broker.close()


async def test_consumers_close_promptly_right_after_starting(broker: RedisBroker) -> None:
    """Closing stops the heartbeat and the delayed mover even when a cancellation lands
    while they talk to Redis (Python 3.11's wait_for can drop it)."""
    for _ in range(20):
        consumer = consumer_of(broker)
        assert await consumer.fetch(1) == []
        await asyncio.wait_for(consumer.close(), 30)
        assert broker._mover is not None
        assert not broker._mover.running


async def test_a_message_landing_after_close_is_swept_by_a_live_consumer(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    """A BLMOVE cancelled while closing may still move a message into the list of a
    consumer that has closed; the next live consumer returns it to the queue."""
    queue = broker.config.default_queue
    closed = consumer_of(broker, tag="closed")
    assert await closed.fetch(1) == []
    await closed.close()
    body = sig(ids(1), "t").to_json()
    await raw.rpush(closed.processing, body)  # what the late BLMOVE did
    alive = consumer_of(broker, tag="alive")
    assert await alive.beat() == 1
    assert await raw.lrange(queue, 0, -1) == [body]
    await alive.close()


async def test_a_claim_interrupted_by_cancellation_is_not_lost(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    queue = broker.config.default_queue
    broker.config.redis.normal_tasks_poll_period = 5000  # the fetch blocks for 5 s
    consumer = consumer_of(broker)
    fetching = asyncio.create_task(consumer.fetch(1))
    await asyncio.sleep(0.2)
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    # Redis may have moved a message for the cancelled BLMOVE: here, one it did.
    body = sig(ids(1), "t").to_json()
    await raw.rpush(consumer.processing, body)
    got = await consumer.fetch(5)  # gives it back first, then claims it again
    assert [d.body for d in got] == [body]
    assert await raw.lrange(consumer.processing, 0, -1) == [body]
    await consumer.close()
    assert await raw.lrange(queue, 0, -1) == [body]


async def test_a_go_worker_and_a_python_worker_share_a_queue(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    """Go pops with BLPOP; the Python consumer claims; every message is taken once."""
    queue = broker.config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(200)])
    go_taken: list[bytes] = []

    async def go_worker() -> None:
        while True:
            item = await raw.blpop([queue], timeout=1)
            if item is None:
                return
            go_taken.append(item[1])

    consumer = consumer_of(broker)
    python_taken = []
    go = asyncio.create_task(go_worker())
    while True:
        got = await consumer.fetch(7)
        if not got:
            break
        python_taken += got
        for delivery in got:
            await consumer.ack(delivery)
    await go
    await consumer.close()
    uuids = [Signature.from_json(b).uuid for b in go_taken] + [
        Signature.from_json(d.body).uuid for d in python_taken
    ]
    assert sorted(uuids) == sorted(ids(i) for i in range(200))
    assert python_taken


# -- delayed tasks -----------------------------------------------------------------------------


async def test_the_mover_moves_every_due_task_at_once_to_its_own_queue(
    broker: RedisBroker, raw: RedisClient, unique: str, ids: Any
) -> None:
    key = broker.config.redis.delayed_tasks_key
    other = f"{unique}_other"
    past = datetime.now(UTC) - timedelta(seconds=5)
    due = [
        sig(ids(i), "t", i, routing_key=other if i % 2 else broker.config.default_queue, eta=past)
        for i in range(40)
    ]
    later = sig(ids("later"), "t", eta=datetime.now(UTC) + timedelta(hours=1))
    # Written as a Go producer writes them: ZADD <ns> <json>.
    for i, s in enumerate([*due, later]):
        assert s.eta is not None
        await raw.zadd(key, {s.to_json(): unix_nanos(s.eta) + i * 1000})
    no_key = json.dumps({"UUID": ids("nokey"), "Name": "t"}).encode()
    garbage = f"not json {unique}".encode()
    await raw.zadd(key, {no_key: 1, garbage: 2})
    assert await broker.move_delayed() == 42
    assert await raw.zrange(key, 0, -1) == [later.to_json()]
    main = await raw.lrange(broker.config.default_queue, 0, -1)
    assert [b for b in main if b not in (no_key, garbage)] == [
        s.to_json() for s in due if s.routing_key == broker.config.default_queue
    ]
    assert no_key in main
    assert garbage in main
    assert await raw.lrange(other, 0, -1) == [s.to_json() for s in due if s.routing_key == other]


async def test_a_consumer_starts_the_mover_and_eta_tasks_arrive(broker: RedisBroker, ids: Any) -> None:
    consumer = consumer_of(broker)
    assert await consumer.fetch(1) == []
    await broker.publish(sig(ids(1), "t", eta=datetime.now(UTC) + timedelta(seconds=0.5)))
    got = await eventually(lambda: consumer.fetch(1), timeout=20)
    assert Signature.from_json(got[0].body).uuid == ids(1)
    await consumer.ack(got[0])
    await consumer.close()


async def test_our_mover_and_gos_mover_move_each_task_once(
    broker: RedisBroker, raw: RedisClient, ids: Any
) -> None:
    from redis.exceptions import WatchError

    key = broker.config.redis.delayed_tasks_key
    queue = broker.config.default_queue
    past = datetime.now(UTC) - timedelta(seconds=1)
    for i in range(150):
        s = sig(ids(i), "t", i, routing_key=queue, eta=past)
        await raw.zadd(key, {s.to_json(): unix_nanos(past) + i * 1000})

    async def go_mover() -> None:
        """Go's mover: WATCH, ZRANGEBYSCORE ... LIMIT 0 1, MULTI ZREM EXEC, then RPUSH."""
        while True:
            async with raw.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    items = await pipe.zrangebyscore(key, 0, "+inf", start=0, num=1)
                    if not items:
                        return
                    pipe.multi()
                    pipe.zrem(key, items[0])
                    await pipe.execute()
                except WatchError:
                    continue
            await raw.rpush(queue, items[0])

    async def our_mover() -> None:
        while await raw.zcard(key):
            await broker.move_delayed()

    if broker.cluster:
        await asyncio.gather(our_mover())  # redis-py's cluster pipeline has no WATCH
    else:
        await asyncio.gather(go_mover(), our_mover())
    moved = [Signature.from_json(b).uuid for b in await raw.lrange(queue, 0, -1)]
    assert sorted(moved) == sorted(ids(i) for i in range(150))


async def test_cluster_mover_recovers_a_dead_movers_staging_list(unique: str, ids: Any) -> None:
    from machinery_aio.drivers.redis.keys import DelayedKeys
    from tests.drivers.redis.conftest import CLUSTER, need

    config = make_config(need(CLUSTER), unique)
    broker = RedisBroker(config)
    client = broker.client
    try:
        keys = DelayedKeys(config.redis.delayed_tasks_key)
        stranded = [sig(ids(i), "t", routing_key=config.default_queue).to_json() for i in range(3)]
        await client.rpush(keys.staging("deadmover"), *stranded)
        await client.zadd(keys.movers, {"deadmover": 1})  # its heartbeat expired long ago
        await broker.move_delayed()  # notices the dead mover and puts its tasks back as due
        await broker.move_delayed()  # moves them
        assert await client.lrange(config.default_queue, 0, -1) == stranded
        assert not await client.exists(keys.staging("deadmover"))
        assert await client.zscore(keys.movers, "deadmover") is None
    finally:
        from tests.drivers.redis.conftest import delete_matching

        await delete_matching(client, f"*{unique}*")
        await broker.close()


# -- inspection ------------------------------------------------------------------------------------


async def test_pending_delayed_and_purge(
    broker: RedisBroker, raw: RedisClient, unique: str, ids: Any
) -> None:
    queue = broker.config.default_queue
    await broker.publish_many([sig(ids(i), "t", i) for i in range(3)])
    await raw.rpush(queue, b"not a signature")
    await broker.publish(sig(ids("d"), "t", eta=datetime.now(UTC) + timedelta(hours=1)))
    pending = await broker.get_pending_tasks()
    assert [s.uuid for s in pending] == [ids(0), ids(1), ids(2)]  # the bad one is not listed
    assert [s.uuid for s in await broker.get_delayed_tasks()] == [ids("d")]
    assert await broker.purge() == 4
    assert await broker.get_pending_tasks() == []
    assert await broker.get_pending_tasks(f"{unique}_none") == []
