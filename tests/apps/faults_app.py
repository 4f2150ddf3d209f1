"""A worker app for the fault suite (tests/faults), configured from Go's environment variables
(BROKER, RESULT_BACKEND, DEFAULT_QUEUE, AMQP_EXCHANGE ...) plus FAULTS_REDIS, the Redis where
tasks count their executions (so a test can tell lost and duplicated runs apart).

Start it with ``python -m machinery_aio worker -A tests.apps.faults_app:server``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from machinery_aio import Config, Server
from machinery_aio.drivers.redis.connection import RedisClient, create_redis

config = Config.from_env()
server = Server(config)
_client: RedisClient | None = None


def _redis() -> RedisClient:
    global _client
    if _client is None:
        _client = create_redis(os.environ["FAULTS_REDIS"], config, max_connections=16)
    return _client


@server.task("count")
async def count(key: str, item: str, seconds: float) -> str:
    """Sleep ``seconds``, then count one execution of ``item`` in the hash ``key``."""
    if seconds:
        await asyncio.sleep(seconds)
    await _redis().hincrby(key, item, 1)
    return item


@server.task("member")
async def member(key: str, value: int, fail: bool) -> int:
    """A chord member; raises when ``fail``."""
    await _redis().sadd(f"{key}:pids", os.getpid())
    if fail:
        raise ValueError(f"member {value} failed on purpose")
    return value


@server.task("chord_total")
async def chord_total(key: str, *values: int) -> int:
    """A chord callback that counts how often it runs."""
    await _redis().incr(key)
    return sum(values)


@server.task("chord_error")
async def chord_error(error: str, key: str) -> str:
    """An on_error callback (the error text comes first): counts how often it runs."""
    await _redis().incr(f"{key}:errors")
    await _redis().set(f"{key}:error", error)
    return "noted"


class UnpicklableError(Exception):
    """Carries a lock, so it can be neither pickled nor turned into JSON."""

    def __init__(self) -> None:
        super().__init__("holding a lock")
        self.lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError("UnpicklableError cannot be pickled")


class BadStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


@server.task("raise_unpicklable")
async def raise_unpicklable() -> None:
    raise UnpicklableError()


@server.task("raise_bad_str")
async def raise_bad_str() -> None:
    raise BadStrError()


@server.task("return_unserialisable")
async def return_unserialisable() -> object:
    return threading.Lock()


@server.task("block_loop", time_limit=0.5)
async def block_loop(seconds: float) -> str:
    """Blocks the event loop (a bug in user code): time.sleep in a coroutine."""
    time.sleep(seconds)
    return "blocked"


@server.task("too_slow", time_limit=0.5)
async def too_slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


@server.task("too_slow_sync", time_limit=0.5)
def too_slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@server.task("long")
async def long(key: str, item: str, seconds: float) -> str:
    """Notes its start in the set ``key:started``, sleeps, then counts its run in ``key``."""
    await _redis().sadd(f"{key}:started", item)
    await asyncio.sleep(seconds)
    await _redis().hincrby(key, item, 1)
    return item
