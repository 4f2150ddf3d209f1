"""``machinery-aio inspect pending|delayed|dead|state`` and ``purge`` against Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from machinery_aio import Config, State, TaskState
from machinery_aio.drivers.redis.backend import RedisBackend
from machinery_aio.drivers.redis.broker import RedisBroker
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.consumer import RedisConsumer
from tests.support.redis import sig

ROOT = Path(__file__).resolve().parents[3]


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "machinery_aio", *args, "--loglevel", "ERROR"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_inspect_and_purge(redis_config: Config, raw: RedisClient, ids: Any) -> None:
    broker = RedisBroker(redis_config)
    backend = RedisBackend(redis_config)
    try:
        await raw.rpush(redis_config.default_queue, b"garbage")
        consumer = broker.consumer(redis_config.default_queue, prefetch=1, tag="cli")
        assert isinstance(consumer, RedisConsumer)
        [bad] = await consumer.fetch(1)
        assert bad.body == b"garbage"
        await consumer.dead_letter(bad, "message is not valid JSON")
        await consumer.close()
        await broker.publish_many([sig(ids(i), "add", i, 1) for i in range(3)])
        await broker.publish(sig(ids("later"), "add", eta=datetime.now(UTC) + timedelta(hours=1)))
        await backend.set_state(TaskState.new(sig(ids(0), "add"), State.PENDING))
    finally:
        await broker.close()
        await backend.close()

    pending = cli(redis_config, "inspect", "pending")
    assert pending.returncode == 0, pending.stderr
    assert [t["uuid"] for t in json.loads(pending.stdout)] == [ids(0), ids(1), ids(2)]
    assert json.loads(pending.stdout)[1]["args"] == [1, 1]

    delayed = cli(redis_config, "inspect", "delayed")
    assert delayed.returncode == 0, delayed.stderr
    assert [t["uuid"] for t in json.loads(delayed.stdout)] == [ids("later")]

    dead = cli(redis_config, "inspect", "dead")
    assert dead.returncode == 0, dead.stderr
    [letter] = json.loads(dead.stdout)
    assert letter["body"] == "garbage"
    assert letter["reason"] == "message is not valid JSON"

    state = cli(redis_config, "inspect", "state", ids(0))
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["State"] == "PENDING"
    missing = cli(redis_config, "inspect", "state", ids("nope"))
    assert missing.returncode == 1

    refused = cli(redis_config, "purge")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    purged = cli(redis_config, "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 3 tasks" in purged.stdout
    assert await raw.llen(redis_config.default_queue) == 0
