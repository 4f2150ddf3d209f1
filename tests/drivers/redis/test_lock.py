"""The Redis lock (periodic tasks) as Go's keys look, and Go's redsync mutex, on a single Redis and
the cluster. What every lock promises is in tests/contract/test_lock.py."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from machinery_aio import Config
from machinery_aio.drivers import create_lock
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.lock import LockNotAcquiredError, RedisLock, RedsyncMutex


@pytest.fixture
async def lock(redis_url: str, raw: RedisClient) -> Any:
    made = create_lock(Config(lock=redis_url))
    assert isinstance(made, RedisLock)
    yield made
    await made.close()


async def test_set_nx_px_and_safe_release(lock: RedisLock, raw: RedisClient, unique: str) -> None:
    key = f"machinery_lock_{unique}"
    token = await lock.acquire(key, 30)
    assert token is not None
    assert await raw.get(key) == token.encode()
    assert 0 < await raw.pttl(key) <= 30_000
    assert await lock.acquire(key, 30) is None  # held
    assert not await lock.release(key, "someone else's token")
    assert await raw.get(key) == token.encode()
    assert await lock.release(key, token)
    assert await raw.get(key) is None
    assert not await lock.release(key, token)  # already gone


async def test_a_given_value_is_stored_as_gos_periodic_lock_does(
    lock: RedisLock, raw: RedisClient, unique: str
) -> None:
    key = f"machinery_lock_app{unique}*/5 * * * *"
    assert await lock.acquire(key, 10, value="1736937000123456788") == "1736937000123456788"
    assert await raw.get(key) == b"1736937000123456788"


async def test_redsync_mutex_is_exclusive(raw: RedisClient, unique: str) -> None:
    name = f"{unique}_mutex"
    inside = 0
    most = 0

    async def critical() -> None:
        nonlocal inside, most
        async with RedsyncMutex(raw, name, min_delay=0.01, max_delay=0.03, tries=1000):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(critical() for _ in range(10)))
    assert most == 1
    assert await raw.get(name) is None


async def test_redsync_mutex_value_and_give_up(raw: RedisClient, unique: str) -> None:
    name = f"{unique}_mutex"
    holder = RedsyncMutex(raw, name)
    await holder.acquire()
    assert len(base64.b64decode(holder.value)) == 16  # redsync: base64 of 16 random bytes
    assert 0 < await raw.pttl(name) <= 8000
    waiter = RedsyncMutex(raw, name, tries=3, min_delay=0.01, max_delay=0.02)
    with pytest.raises(LockNotAcquiredError, match="3 tries"):
        await waiter.acquire()
    assert not await waiter.release()
    assert await holder.release()
    assert await raw.get(name) is None
