"""A worker app for the Redis subprocess tests, configured from Go's environment variables
(BROKER, RESULT_BACKEND, DEFAULT_QUEUE, REDIS_CONSUMER_TIMEOUT, ...).

Start it with ``python -m machinery_aio worker -A tests.apps.redis_app:server``. Its tasks
record every execution in Redis, so a test can tell lost and repeated runs apart.
"""

from __future__ import annotations

import asyncio
import os

from machinery_aio import Config, Server
from machinery_aio.drivers.redis.connection import RedisClient, create_redis

config = Config.from_env()
server = Server(config)
_client: RedisClient | None = None


def _redis() -> RedisClient:
    global _client
    if _client is None:
        _client = create_redis(config.broker, config, max_connections=16)
    return _client


@server.task("record")
async def record(key: str, item: str, seconds: float) -> str:
    """Sleep, then add ``item`` to the set ``key`` and count the run in ``key:runs``."""
    await asyncio.sleep(seconds)
    client = _redis()
    await client.sadd(key, item)
    await client.incr(f"{key}:runs")
    return item


@server.task("member")
async def member(key: str, value: int, seconds: float) -> int:
    """A chord member: sleeps, notes which worker process ran it, returns ``value``."""
    await asyncio.sleep(seconds)
    await _redis().sadd(f"{key}:pids", os.getpid())
    return value


@server.task("add")
async def add(*values: int) -> int:
    return sum(values)


@server.task("chord_total")
async def chord_total(key: str, *values: int) -> int:
    """A chord callback that counts how often it runs."""
    await _redis().incr(key)
    return sum(values)


async def limited(key: str) -> None:
    """Rate-limited to 10/s: notes when (Redis's clock) and in which process it started."""
    client = _redis()
    seconds, micros = await client.time()
    await client.rpush(key, f"{seconds + micros / 1e6:.6f} {os.getpid()}")


# Its name comes from the test, so that limits of tests running at once never meet.
server.register_task(os.environ.get("RATE_TASK_NAME", "limited"), limited, rate_limit="10/s")
