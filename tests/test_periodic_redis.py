"""Periodic tasks with the Redis lock (db 5): exactly once across servers and processes,
Go's lock key, and ``machinery-aio beat``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio

from machinery_aio import Arg, Config, Server, Signature
from tests.conftest import require_server
from tests.support.periodic import (
    REDIS_URL,
    Processes,
    app_env,
    assert_each_tick_once,
    delete_keys,
    records,
    wait_for,
)

MakeServer = Callable[[Config], Server]


@pytest.fixture
def redis5(unique: str) -> Iterator[redis.Redis]:
    require_server("127.0.0.1", 6379, "Redis")
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    delete_keys(client, f"*{unique}*")
    client.close()


@pytest.fixture
async def aredis5(redis5: redis.Redis) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.kill_all()


def redis_locked(unique: str, go_compatible: bool = True) -> Config:
    return Config(
        broker=f"memory://{unique}",
        result_backend=f"memory://{unique}",
        lock=REDIS_URL,
        default_queue=f"{unique}_tasks",
        app_name=unique,
        go_compatible=go_compatible,
    )


def add_sig() -> Signature:
    return Signature(name="add", args=[Arg(type="int64", value=1), Arg(type="int64", value=2)])


async def test_redis_lock_sends_each_tick_once_across_servers(
    unique: str, aredis5: redis.asyncio.Redis, make_server: MakeServer
) -> None:
    # Four Redis connections; the tick keys alone (Go's period key has tests of its own).
    servers = [make_server(redis_locked(unique, go_compatible=False)) for _ in range(4)]
    sent: list[str] = []
    for server in servers:
        server.set_pre_publish_handler(lambda sig: sent.append(sig.uuid))
        server.register_periodic_task("* * * * * *", "job", add_sig())
    tick = datetime.now(UTC).replace(microsecond=0)
    for moment in (tick, tick + timedelta(seconds=1)):
        won = await asyncio.gather(*(s.scheduler.fire(s.scheduler.entries["job"], moment) for s in servers))
        assert won.count(True) == 1
    assert len(sent) == 2
    scheduler = servers[0].scheduler
    key = scheduler.tick_key(scheduler.entries["job"], tick)
    assert key == f"machinery_periodic:{unique}:job:{int(tick.timestamp())}"
    # The tick's key outlives every scheduler's attempt at it: it lives until the next tick
    # plus clock skew on both sides plus the misfire grace.
    covers = 2 * scheduler.clock_skew + scheduler.misfire_grace
    pttl = await aredis5.pttl(key)
    after = time.time()
    assert pttl >= ((tick + timedelta(seconds=1)).timestamp() + covers - after) * 1000 - 1


async def test_go_lock_key_value_and_expiry_as_go_builds_them(
    unique: str, aredis5: redis.asyncio.Redis, make_server: MakeServer
) -> None:
    server = make_server(redis_locked(unique))
    entry = server.register_periodic_task("@every 1h", "report", add_sig())
    tick = entry.schedule.latest_at_or_before(datetime.now(UTC))
    assert tick is not None
    before = time.time_ns()
    assert await server.scheduler.fire(entry, tick)
    key = f"machinery_lock_{unique}report@every 1h"
    next_ns = int((tick + timedelta(hours=1)).timestamp()) * 1_000_000_000
    # Go's value: the next tick in ns minus one; the key expires at the next tick.
    assert await aredis5.get(key) == str(next_ns - 1).encode()
    pttl = await aredis5.pttl(key)
    assert 0 < pttl <= (next_ns - before) // 1_000_000
    # Go's Lock() on that key now fails: SETNX fails and the stored time has not passed.
    assert not await aredis5.set(key, str(next_ns - 1), nx=True, px=1000)
    assert int(await aredis5.get(key) or 0) > time.time_ns()


async def test_a_go_scheduler_holding_its_key_keeps_python_out(
    unique: str, aredis5: redis.asyncio.Redis, make_server: MakeServer
) -> None:
    server = make_server(redis_locked(unique))
    server.scheduler.clock_skew = 0.2
    sent: list[str] = []
    server.set_pre_publish_handler(lambda sig: sent.append(sig.uuid))
    entry = server.register_periodic_task("@every 1h", "report", add_sig())
    tick = entry.schedule.latest_at_or_before(datetime.now(UTC))
    assert tick is not None
    next_tick = tick + timedelta(hours=1)
    next_ns = int(next_tick.timestamp()) * 1_000_000_000
    # What Go's redis Lock does at the tick: SET key <next ns - 1> NX PX <until then>.
    assert await aredis5.set(
        f"machinery_lock_{unique}report@every 1h",
        str(next_ns - 1),
        nx=True,
        px=(next_ns - time.time_ns()) // 1_000_000,
    )
    assert not await server.scheduler.fire(entry, tick)
    assert sent == []


def test_three_beat_processes_send_each_tick_once(
    unique: str, redis5: redis.Redis, processes: Processes
) -> None:
    # Each process has its own memory:// broker; the Redis lock is what they share, and
    # the app records every send in Redis from the process that sends it.
    env = app_env(unique, broker="memory://", result_backend="memory://", lock=REDIS_URL)
    for i in range(3):
        processes.start(["beat", "-A", "tests.apps.periodic_app:make_server"], env, f"beat{i}")
    up, sent = f"ptest:{unique}:up", f"ptest:{unique}:sent"
    wait_for(lambda: redis5.scard(up) == 3, "three beat processes", logs=processes.logs)
    seen = len({r["tick"] for r in records(redis5, sent)})
    wait_for(
        lambda: len({r["tick"] for r in records(redis5, sent)}) >= seen + 5,
        "five more ticks",
        logs=processes.logs,
    )
    processes.stop_all()
    sends = records(redis5, sent)
    assert_each_tick_once([r["tick"] for r in sends], at_least=5)
    assert len({r["uuid"] for r in sends}) == len(sends)
    delete_keys(redis5, also=frozenset(r["uuid"] for r in sends))


def test_beat_runs_until_sigterm_and_exits_cleanly(
    unique: str, redis5: redis.Redis, processes: Processes
) -> None:
    env = app_env(unique, broker="memory://", result_backend="memory://", lock=REDIS_URL)
    proc = processes.start(["beat", "-A", "tests.apps.periodic_app:make_server"], env, "beat")
    sent = f"ptest:{unique}:sent"
    wait_for(lambda: redis5.llen(sent) >= 2, "two sends", logs=processes.logs)
    processes.stop_all()
    assert proc.returncode == 0
    log = processes.logs()
    assert "stopping the scheduler" in log
    assert "scheduler stopped" in log
    assert all(r["tick"] for r in records(redis5, sent))
