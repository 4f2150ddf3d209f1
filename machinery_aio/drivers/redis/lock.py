"""The Redis lock: ``SET key token NX PX ttl``, released only by its holder (Lua).

:class:`RedsyncMutex` is the same lock taken the way Go Machinery's Redis
backend takes ``TriggerChordMutex`` (redsync v4 defaults), so Python and Go
workers exclude each other.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
from types import TracebackType
from typing import Any

from ..lock import Lock
from .batcher import LuaScript, run_script
from .connection import RedisClient, create_redis

__all__ = ["LockNotAcquiredError", "RedisLock", "RedsyncMutex"]

RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
""")


class LockNotAcquiredError(RuntimeError):
    """A lock stayed taken through every try."""


class RedisLock(Lock):
    """A lock on one Redis (or a cluster: every lock is a single key)."""

    def __init__(self, config: Any, url: str | None = None) -> None:
        super().__init__(config, url)
        self._client: RedisClient | None = None

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            self._client = create_redis(self.url, self.config, max_connections=8)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def acquire(self, key: str, ttl: float, value: str | None = None) -> str | None:
        token = value or secrets.token_hex(16)
        ok = await self.client.set(key, token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    async def release(self, key: str, token: str) -> bool:
        deleted = await run_script(self.client, RELEASE, [key], [token])
        return bool(deleted)


class RedsyncMutex:
    """Go's redsync mutex on one Redis: ``SET name <base64 of 16 random bytes> NX PX expiry``,
    up to ``tries`` attempts 50-250 ms apart, released only if the value still matches.

    ``async with RedsyncMutex(client, "TriggerChordMutex"):`` excludes Go workers
    that take the same mutex. Raises :class:`LockNotAcquiredError` when every try fails.
    """

    def __init__(
        self,
        client: RedisClient,
        name: str,
        *,
        expiry: float = 8.0,
        tries: int = 32,
        min_delay: float = 0.05,
        max_delay: float = 0.25,
    ) -> None:
        self.client = client
        self.name = name
        self.expiry = expiry
        self.tries = tries
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.value = ""

    async def acquire(self) -> None:
        value = base64.b64encode(secrets.token_bytes(16)).decode()
        for attempt in range(self.tries):
            if await self.client.set(self.name, value, nx=True, px=int(self.expiry * 1000)):
                self.value = value
                return
            if attempt + 1 < self.tries:
                await asyncio.sleep(random.uniform(self.min_delay, self.max_delay))
        raise LockNotAcquiredError(f"could not take the {self.name!r} lock in {self.tries} tries")

    async def release(self) -> bool:
        value, self.value = self.value, ""
        if not value:
            return False
        return bool(await run_script(self.client, RELEASE, [self.name], [value]))

    async def __aenter__(self) -> RedsyncMutex:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
