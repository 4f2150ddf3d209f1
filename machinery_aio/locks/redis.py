"""The Redis lock: ``SET key token NX PX ttl``, released only by its holder (Lua)."""

from __future__ import annotations

import secrets
from typing import Any

from ..redisconn import RedisClient, create_redis
from .base import Lock

__all__ = ["RedisLock"]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock(Lock):
    """A lock on one Redis (or a cluster: every lock is a single key)."""

    scheme = "redis"

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
            await self._client.aclose()
            self._client = None

    async def acquire(self, key: str, ttl: float, value: str | None = None) -> str | None:
        token = value or secrets.token_hex(16)
        ok = await self.client.set(key, token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    async def release(self, key: str, token: str) -> bool:
        deleted = await self.client.eval(_RELEASE, 1, key, token)
        return bool(deleted)
