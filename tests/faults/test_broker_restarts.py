"""Case 2: the broker goes away mid-drain. A private, password-protected redis-server is
restarted; RabbitMQ's connections to the test's vhost are closed (twice). The worker and the
producer reconnect and finish, nothing is lost, and a send_task during the outage either waits
and succeeds or raises a clear error (never drops the task silently)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from tests.drivers.amqp.conftest import close_vhost_connections
from tests.faults.conftest import (
    PASSWORD,
    PrivateRedis,
    Workers,
    amqp_config,
    item_of,
    record_figures,
    redis_config,
    text,
    wait_for_success,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKS = 3000
CONCURRENCY = 20


def count(unique: str, key: str, i: int | str) -> Signature:
    return Signature(uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)])


async def progress(raw: RedisClient, key: str, target: int, workers: Workers, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await raw.hlen(key) < target:
        for tag, proc in workers.procs.items():
            assert proc.poll() is None, workers.log(tag)[-3000:]
        assert time.monotonic() < deadline, (await raw.hlen(key), target)
        await asyncio.sleep(0.05)


async def send_during_outage(server: Server, sig: Signature) -> str:
    """Send one task while the broker is down: it waits and succeeds, or raises clearly."""
    try:
        async with asyncio.timeout(90):  # a hang guard
            await server.send_task(sig)
    except TimeoutError:
        raise AssertionError("send_task neither succeeded nor raised during the outage") from None
    except Exception as exc:  # a clear error is allowed; it must say what went wrong
        text = f"{type(exc).__name__}: {exc}"
        assert PASSWORD not in text
        return f"raised {text[:80]}" if str(exc) else f"raised an unclear {text}"
    return "waited and succeeded"


async def finish(
    server: Server,
    config: Config,
    raw: RedisClient,
    workers: Workers,
    key: str,
    sent: list[Signature],
    case: str,
    outcome: str,
    outages: int,
) -> None:
    try:
        await progress(raw, key, len(sent), workers, timeout=60)
    except AssertionError:
        done = {text(k) for k in await raw.hkeys(key)}
        missing = [s for s in sent if item_of(s) not in done]
        client = server.backend.client  # type: ignore[attr-defined]
        where = {text(k): await client.type(k) async for k in client.scan_iter(match="*")}
        states = await server.backend.get_states([s.uuid for s in missing])
        lines = [
            line
            for line in workers.log("w").splitlines()
            if " machinery_aio." in line or any(s.uuid in line for s in missing)
        ]
        odd = {k: v for k, v in where.items() if not k.startswith("task_")}
        raise AssertionError(
            f"missing {[s.uuid for s in missing][:5]} states {states[:3]} keys {odd} log {lines[-60:]}"
        ) from None
    await wait_for_success(server.backend, sent)  # the count is written before the state
    counts = [int(v) for v in (await raw.hgetall(key)).values()]
    for tag, proc in workers.procs.items():
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, workers.log(tag)[-3000:]
        assert PASSWORD not in workers.log(tag)
    record_figures(
        case,
        sent=len(sent),
        completed=len(counts),
        lost=len(sent) - len(counts),
        duplicated=sum(counts) - len(counts),
        note=f"send during outage: {outcome}",
    )
    # Only tasks running (unacked, at most the concurrency) when an outage began run twice.
    assert sum(counts) - len(counts) <= outages * CONCURRENCY


async def test_redis_restarted_mid_drain(
    raw: RedisClient, unique: str, workers: Workers, private_redis: Callable[..., PrivateRedis]
) -> None:
    redis = private_redis("--requirepass", PASSWORD)
    config = redis_config(unique, f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0")
    server = Server(config)
    key = f"{unique}:runs"
    sent = [count(unique, key, i) for i in range(TASKS)]
    try:
        await server.send_tasks(sent)
        workers.start(config, "w", CONCURRENCY)
        await progress(raw, key, TASKS // 3, workers)
        await asyncio.to_thread(redis.stop)

        async def restart_later() -> None:
            await asyncio.sleep(3)
            await asyncio.to_thread(redis.start)

        restarting = asyncio.create_task(restart_later())
        extra = count(unique, key, "outage")
        outcome = await send_during_outage(server, extra)
        await restarting
        if outcome.startswith("waited"):
            sent.append(extra)
        await finish(
            server, config, raw, workers, key, sent, "2. redis-server restarted mid-drain", outcome, 1
        )
    finally:
        await server.close()


async def test_rabbitmq_connections_closed_mid_drain(
    raw: RedisClient, unique: str, vhost: str, workers: Workers
) -> None:
    config = amqp_config(unique, vhost)
    server = Server(config)
    key = f"{unique}:runs"
    sent = [count(unique, key, i) for i in range(TASKS)]
    outcomes = []
    try:
        await server.send_tasks(sent)
        workers.start(config, "w", CONCURRENCY)
        for n in (1, 2):
            await progress(raw, key, n * TASKS // 3, workers)
            await asyncio.to_thread(close_vhost_connections, vhost)
            extra = count(unique, key, f"outage{n}")
            outcome = await send_during_outage(server, extra)
            outcomes.append(outcome)
            if outcome.startswith("waited"):
                sent.append(extra)
        await finish(
            server,
            config,
            raw,
            workers,
            key,
            sent,
            "2. RabbitMQ connections closed x2",
            "; ".join(outcomes),
            2,
        )
    finally:
        await server.close()
