"""End to end: three worker processes on the Redis broker and backend (db 5), each running
the scheduler, send every tick of a one-second schedule exactly once; a periodic chord's
callback runs once per tick.

These need ``machinery_aio.drivers.redis``. Without it they are skipped, except under
CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from machinery_aio import Config, Server, Signature
from tests.apps.periodic_app import build
from tests.conftest import IN_CI, require_server
from tests.support.periodic import (
    REDIS_URL,
    Processes,
    app_env,
    assert_each_tick_once,
    delete_keys,
    records,
    wait_for,
)

pytestmark = pytest.mark.slow


def require_redis_broker() -> None:
    require_server("127.0.0.1", 6379, "Redis")
    if importlib.util.find_spec("machinery_aio.drivers.redis.broker") is None:
        message = "the Redis broker (machinery_aio.drivers.redis) is not in this checkout"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def redis5(unique: str) -> Iterator[redis.Redis]:
    require_redis_broker()
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    tokens = {unique}
    for key in (f"ptest:{unique}:sent", f"ptest:{unique}:ran"):
        for record in records(client, key):
            tokens.update(str(record[k]) for k in ("uuid", "group") if record.get(k))
    delete_keys(client, also=frozenset(tokens))
    client.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.kill_all()


async def drain(env: dict[str, str], ticks: set[str], ran_key: str) -> None:
    """Run what the stopped workers left in the queue, with a worker that does not schedule."""
    server = build(env)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async with server.new_worker("drain", concurrency=4, run_scheduler=False):
            deadline = time.monotonic() + 60
            while not ticks <= {r["tick"] for r in records(client, ran_key)}:
                assert time.monotonic() < deadline, "the drain worker did not run every tick's task"
                await asyncio.sleep(0.1)
        # Nothing is left behind: no tick's task is still queued.
        assert await server.broker.get_pending_tasks() == []
    finally:
        await server.close()
        client.close()


@pytest.mark.parametrize("kind", ["task", "chord"])
def test_three_workers_send_each_tick_once(
    kind: str, unique: str, redis5: redis.Redis, processes: Processes
) -> None:
    env = app_env(unique, broker=REDIS_URL, result_backend=REDIS_URL, kind=kind)
    for i in range(3):
        processes.start(
            ["worker", "-A", "tests.apps.periodic_app:make_server", "-c", "4", "-t", f"{unique}-w{i}"],
            env,
            f"worker{i}",
        )
    up, sent, ran = f"ptest:{unique}:up", f"ptest:{unique}:sent", f"ptest:{unique}:ran"
    wait_for(lambda: redis5.scard(up) == 3, "three workers", logs=processes.logs)
    seen = len({r["tick"] for r in records(redis5, sent)})
    wait_for(
        lambda: len({r["tick"] for r in records(redis5, sent)}) >= seen + 5,
        "five more ticks",
        logs=processes.logs,
    )
    processes.stop_all()

    sends = records(redis5, sent)
    if kind == "task":
        tick_of_send = [r["tick"] for r in sends]
    else:
        members = Counter(r["group"] for r in sends)
        assert set(members.values()) == {2}, f"chord groups not sent whole: {members}"
        tick_of_send = list({r["group"]: r["tick"] for r in sends}.values())
    assert_each_tick_once(tick_of_send, at_least=5)
    assert len({r["uuid"] for r in sends}) == len(sends)

    ticks = set(tick_of_send)
    asyncio.run(drain(env, ticks, ran))
    runs = records(redis5, ran)
    # The task (or the chord's callback) ran once for every tick, and for no other.
    assert Counter(r["tick"] for r in runs) == Counter(ticks)
    if kind == "chord":
        assert all(r["results"] == [3, 3] for r in runs)


async def test_memory_lock_with_a_shared_broker_warns(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    require_redis_broker()
    server = Server(
        Config(
            broker=REDIS_URL,
            result_backend=f"memory://{unique}",
            lock=f"memory://{unique}",
            default_queue=f"{unique}_tasks",
            app_name=unique,
        )
    )
    server.register_periodic_task("@daily", "job", Signature(name="ptest_record"))
    try:
        with caplog.at_level(logging.WARNING, "machinery_aio.periodic"):
            run = asyncio.create_task(server.scheduler.run())
            await asyncio.wait_for(server.scheduler.started.wait(), 30)
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    finally:
        await server.close()
    assert "in-memory lock" in caplog.text
