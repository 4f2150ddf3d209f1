"""Case 5: SIGTERM while long tasks run: they finish, unstarted tasks go back to the queue,
and the worker exits 0 within its grace period. A new worker then runs the rest once."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from tests.faults.conftest import Workers, amqp_config, record_figures, redis_config, text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TASKS = 15
CONCURRENCY = 5
SECONDS = 2.0
GRACE = 20.0


@pytest.fixture(params=["redis", "rabbitmq"])
def config(request: pytest.FixtureRequest, unique: str, raw: RedisClient) -> Config:
    if request.param == "redis":
        return redis_config(unique)
    vhost: str = request.getfixturevalue("vhost")
    return amqp_config(unique, vhost)


async def test_sigterm_finishes_running_tasks_and_returns_the_rest(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    server = Server(config)
    key = f"{unique}:runs"
    sigs = [
        Signature(uuid=f"task_{unique}_{i}", name="long", args=[Arg.of(key), Arg.of(str(i)), Arg.of(SECONDS)])
        for i in range(TASKS)
    ]
    try:
        await server.send_tasks(sigs)
        first = workers.start(config, "first", CONCURRENCY, grace_period=GRACE)
        deadline = time.monotonic() + 60
        while await raw.scard(f"{key}:started") < CONCURRENCY:
            assert time.monotonic() < deadline, workers.log("first")
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        assert first.wait(GRACE + 30) == 0, workers.log("first")
        assert time.monotonic() - sent_at < GRACE, "exited within the grace period"
        started = {text(m) for m in await raw.smembers(f"{key}:started")}
        finished = {text(k) for k in await raw.hkeys(key)}
        assert started == finished  # the running ones finished
        assert len(finished) == CONCURRENCY
        if config.broker.startswith("redis"):
            assert await raw.llen(config.default_queue) == TASKS - CONCURRENCY
        else:
            pending = await server.broker.get_pending_tasks(config.default_queue)
            assert len(pending) == TASKS - CONCURRENCY
        states = await server.backend.get_states([s.uuid for s in sigs])
        assert sum(1 for s in states if s is not None and s.is_success()) == CONCURRENCY

        second = workers.start(config, "second", CONCURRENCY, grace_period=GRACE)
        deadline = time.monotonic() + 60
        while await raw.hlen(key) < TASKS:
            assert time.monotonic() < deadline, workers.log("second")
            await asyncio.sleep(0.05)
        second.send_signal(signal.SIGTERM)
        assert second.wait(GRACE + 30) == 0, workers.log("second")
        counts = [int(v) for v in (await raw.hgetall(key)).values()]
        states = await server.backend.get_states([s.uuid for s in sigs])
        assert all(s is not None and s.is_success() for s in states)
    finally:
        await server.close()
    record_figures(
        f"5. SIGTERM mid-run, {config.broker.split(':')[0]}",
        sent=TASKS,
        completed=len(counts),
        lost=TASKS - len(counts),
        duplicated=sum(counts) - len(counts),
        note=f"{CONCURRENCY} running finished, rest requeued",
    )
    assert counts == [1] * TASKS  # a graceful stop runs nothing twice
