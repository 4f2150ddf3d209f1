"""Case 1: workers killed with SIGKILL several times during a 10,000-task drain lose nothing.

Every task ends with one SUCCESS state; executions are counted per task in Redis, so the
duplicates (at-least-once delivery) are reported and bounded by what was in flight."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from tests.faults.conftest import Workers, amqp_config, record_figures, redis_config, text, wait_for_success

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TASKS = 10_000
CONCURRENCY = 20
KILLS = 3


async def drain_with_kills(
    server: Server, config: Config, raw: RedisClient, workers: Workers, key: str, prefix: str
) -> dict[str, int]:
    sigs = [
        Signature(uuid=f"task_{prefix}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)])
        for i in range(TASKS)
    ]
    for start in range(0, TASKS, 1000):
        await server.send_tasks(sigs[start : start + 1000])
    for kill in range(KILLS):
        tag = f"w{kill}"
        proc = workers.start(config, tag, CONCURRENCY)
        target = (kill + 1) * TASKS // (KILLS + 2)
        deadline = time.monotonic() + 120
        while await raw.hlen(key) < target:
            assert proc.poll() is None, workers.log(tag)
            assert time.monotonic() < deadline, f"no progress to {target}: {workers.log(tag)}"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        assert await raw.hlen(key) < TASKS  # killed mid-drain
    last = workers.start(config, "last", CONCURRENCY)
    deadline = time.monotonic() + 180
    while await raw.hlen(key) < TASKS:
        assert last.poll() is None, workers.log("last")
        assert time.monotonic() < deadline, f"drain stuck at {await raw.hlen(key)}"
        await asyncio.sleep(0.1)
    await wait_for_success(server.backend, sigs)
    counts = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
    assert sorted(counts, key=int) == [str(i) for i in range(TASKS)]
    last.send_signal(signal.SIGTERM)
    assert last.wait(60) == 0, workers.log("last")
    return counts


def report(case: str, counts: dict[str, int]) -> int:
    duplicated = sum(counts.values()) - len(counts)
    record_figures(
        case,
        sent=TASKS,
        completed=len(counts),
        lost=TASKS - len(counts),
        duplicated=duplicated,
        note=f"{KILLS} SIGKILLs, concurrency {CONCURRENCY}",
    )
    return duplicated


async def test_sigkills_during_a_redis_drain(raw: RedisClient, unique: str, workers: Workers) -> None:
    config = redis_config(unique)
    server = Server(config)
    key = f"{unique}:runs"
    try:
        counts = await drain_with_kills(server, config, raw, workers, key, unique)
        assert await raw.llen(config.default_queue) == 0
    finally:
        await server.close()
    duplicated = report("1. SIGKILL x3, Redis, 10k tasks", counts)
    # Only messages a killed worker had claimed and not acked run again.
    assert duplicated <= KILLS * CONCURRENCY


async def test_sigkills_during_a_rabbitmq_drain(
    raw: RedisClient, unique: str, vhost: str, workers: Workers
) -> None:
    config = amqp_config(unique, vhost)
    server = Server(config)
    key = f"{unique}:runs"
    try:
        counts = await drain_with_kills(server, config, raw, workers, key, unique)
        pending: list[Any] = await server.broker.get_pending_tasks(config.default_queue)
        assert pending == []
    finally:
        await server.close()
    duplicated = report("1. SIGKILL x3, RabbitMQ, 10k tasks", counts)
    # Only deliveries a killed worker held unacked (prefetch = concurrency) run again.
    assert duplicated <= KILLS * CONCURRENCY
