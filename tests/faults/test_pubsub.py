"""Pub/Sub (on Google's emulator): a worker killed with SIGKILL in the middle of a drain loses
nothing, and bad messages published among the tasks are dead-lettered with their reasons.

An emulator restart loses what the emulator held (it keeps everything in memory; Google's
service does not restart that way), so the restart case checks that workers and producers
reconnect and carry on, not that nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from machinery_aio import Arg, Server, Signature, gotime
from machinery_aio.drivers.gcp.broker import GCPPubSubBroker
from machinery_aio.drivers.redis.connection import RedisClient
from tests.conftest import require_server
from tests.drivers.gcp.conftest import needs_emulator, pubsub_config
from tests.faults.conftest import (
    REDIS_URL,
    Workers,
    free_port,
    record_figures,
    text,
    wait_for_success,
)
from tests.support.drivers import eventually
from tests.support.pubsub import PUBSUB_SERVER, PrivateEmulator, pubsub_cleanup

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), needs_emulator]

TASKS = 1000
CONCURRENCY = 20
ACK_DEADLINE = 10


async def test_a_sigkill_during_a_pubsub_drain_loses_nothing_and_bad_messages_are_set_aside(
    raw: RedisClient, unique: str, workers: Workers
) -> None:
    from google.pubsub_v1 import PubsubMessage

    require_server(*PUBSUB_SERVER)
    config = pubsub_config(unique, REDIS_URL, ack_deadline=ACK_DEADLINE)
    server = Server(config)
    key = f"{unique}:runs"
    deadline_env = str(ACK_DEADLINE)
    bad = [b"{not json", b'{"Name": "count", "Args": []}']
    try:
        sigs = [
            Signature(
                uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.002)]
            )
            for i in range(TASKS)
        ]
        await server.send_tasks(sigs[: TASKS // 2])
        broker = server.broker
        assert isinstance(broker, GCPPubSubBroker)
        await broker.clients.publisher.publish(
            topic=broker.names.topic_path(config.default_queue), messages=[PubsubMessage(data=b) for b in bad]
        )
        await server.send_tasks(sigs[TASKS // 2 :])

        first = workers.start(config, "w0", CONCURRENCY, GCP_PUBSUB_ACK_DEADLINE=deadline_env)
        deadline = time.monotonic() + 120
        while await raw.hlen(key) < TASKS // 3:
            assert first.poll() is None, workers.log("w0")
            assert time.monotonic() < deadline, f"no progress: {workers.log('w0')}"
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        assert await raw.hlen(key) < TASKS  # killed mid-drain

        last = workers.start(config, "last", CONCURRENCY, GCP_PUBSUB_ACK_DEADLINE=deadline_env)
        deadline = time.monotonic() + 120
        while await raw.hlen(key) < TASKS:
            assert last.poll() is None, workers.log("last")
            assert time.monotonic() < deadline, f"drain stuck at {await raw.hlen(key)}"
            await asyncio.sleep(0.1)
        await wait_for_success(server.backend, sigs)
        counts = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
        assert sorted(counts, key=int) == [str(i) for i in range(TASKS)]
        letters = await broker.get_dead_letters()
        assert sorted(letter.body.encode() for letter in letters) == sorted(bad)
        assert all(letter.reason for letter in letters)
        last.send_signal(signal.SIGTERM)
        assert last.wait(60) == 0, workers.log("last")
        assert await broker.count_pending() == 0
    finally:
        await server.close()
        await pubsub_cleanup(config, unique, set())
    duplicated = sum(counts.values()) - len(counts)
    record_figures(
        "SIGKILL x1, Pub/Sub emulator, 1k tasks",
        sent=TASKS,
        completed=len(counts),
        lost=TASKS - len(counts),
        duplicated=duplicated,
        note=f"concurrency {CONCURRENCY}, ack deadline {ACK_DEADLINE} s; 2 bad messages dead-lettered",
    )
    # Only messages the killed worker held run again: at most its concurrency, plus the tasks
    # whose acks were still on their way (acks go in batches, up to a concurrency's worth).
    assert duplicated <= 2 * CONCURRENCY


async def test_workers_and_producers_carry_on_after_the_emulator_restarts(
    unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator forgets everything when it restarts (topics, subscriptions, messages), so
    what it held is lost with it; the worker and the producer reconnect, create the topic and
    the subscription again, and carry on."""
    emulator = PrivateEmulator(free_port(), tmp_path / "emulator.log")
    emulator.start()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    server = Server(pubsub_config(unique))

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    broker = server.broker
    assert isinstance(broker, GCPPubSubBroker)
    subscription = broker.names.subscription_path(f"{unique}_sub")
    try:
        async with server.new_worker("w", concurrency=4):
            before = await server.send_task(Signature(name="add", args=[Arg.of(1), Arg.of(2)]))
            assert await before.get(timeout=30) == 3
            emulator.stop()
            emulator.start()

            async def recreated() -> bool:
                # The worker's next pull finds its subscription gone and creates it again.
                try:
                    await broker.clients.subscriber.get_subscription(subscription=subscription)
                except Exception:
                    return False
                return True

            await eventually(recreated, "the worker to create its subscription again", timeout=60)
            after = await server.send_task(Signature(name="add", args=[Arg.of(3), Arg.of(4)]))
            assert await after.get(timeout=30) == 7
    finally:
        await server.close()
        emulator.stop()


async def test_sigterm_gives_back_the_tasks_held_for_their_eta(
    raw: RedisClient, unique: str, workers: Workers
) -> None:
    """With a 600 s ack deadline, only the worker's give-back on SIGTERM lets another worker run
    the tasks it was holding for their ETA within the test's time."""
    require_server(*PUBSUB_SERVER)
    config = pubsub_config(unique, REDIS_URL, ack_deadline=600)
    server = Server(config)
    key = f"{unique}:runs"
    try:
        now = [
            Signature(
                uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)]
            )
            for i in range(3)
        ]
        eta = gotime.now() + timedelta(seconds=8)
        later = [
            Signature(
                uuid=f"task_{unique}_{i}",
                name="count",
                args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)],
                eta=eta,
            )
            for i in range(3, 8)
        ]
        await server.send_tasks([*now, *later])
        first = workers.start(config, "w0", 4, GCP_PUBSUB_ACK_DEADLINE="600")
        deadline = time.monotonic() + 60
        while await raw.hlen(key) < len(now):
            assert first.poll() is None, workers.log("w0")
            assert time.monotonic() < deadline, workers.log("w0")
            await asyncio.sleep(0.05)

        async def all_held() -> bool:  # pulled by w0 and held for their ETA: none waiting
            return await server.broker.count_pending() == 0

        await eventually(all_held, "w0 to hold the ETA tasks")
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, workers.log("w0")
        assert await raw.hlen(key) == len(now)  # the held ones did not run
        last = workers.start(config, "last", 4, GCP_PUBSUB_ACK_DEADLINE="600")
        await wait_for_success(server.backend, [*now, *later], timeout=60)
        assert gotime.now() >= eta
        counts = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
        assert counts == {str(i): 1 for i in range(8)}
        last.send_signal(signal.SIGTERM)
        assert last.wait(60) == 0, workers.log("last")
    finally:
        await server.close()
        await pubsub_cleanup(config, unique, set())
