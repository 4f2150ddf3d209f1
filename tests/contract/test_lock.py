"""What every lock promises: one holder at a time, released only with its token, expiry."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.conftest import Kit
from tests.support.drivers import eventually

pytestmark = pytest.mark.contract("lock")


async def test_a_lock_has_one_holder_and_is_released_only_with_its_token(kit: Kit) -> None:
    lock, other = await kit.lock(), await kit.lock()
    key = f"lock_{kit.unique}"
    token = await lock.acquire(key, 30)
    assert token
    assert await lock.acquire(key, 30) is None
    assert await other.acquire(key, 30) is None  # another connection, the same lock
    assert await other.release(key, "not-the-token") is False
    assert await other.acquire(key, 30) is None
    assert await other.release(key, token) is True
    assert await lock.release(key, token) is False  # released already
    assert await other.acquire(key, 30, value="mine") == "mine"
    assert await lock.acquire(key, 30) is None
    assert await lock.release(key, "mine") is True


async def test_locks_of_other_keys_are_independent(kit: Kit) -> None:
    lock = await kit.lock()
    assert await lock.acquire(f"lock_{kit.unique}_a", 30)
    assert await lock.acquire(f"lock_{kit.unique}_b", 30)


async def test_one_of_many_concurrent_acquires_wins(kit: Kit) -> None:
    locks = [await kit.lock() for _ in range(3)]
    key = f"lock_{kit.unique}"
    tokens = await asyncio.gather(*(locks[n % 3].acquire(key, 30) for n in range(30)))
    assert sum(t is not None for t in tokens) == 1


async def test_a_lock_expires(kit: Kit) -> None:
    lock, other = await kit.lock(), await kit.lock()
    key = f"lock_{kit.unique}"
    token = await lock.acquire(key, 0.3)
    assert token
    assert await eventually(lambda: other.acquire(key, 30), "the lock to expire")
    assert await lock.release(key, token) is False  # it expired: the new holder keeps it
