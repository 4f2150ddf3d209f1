"""The embedded ``memory://`` lock: exclusive within one process and event loop."""

from __future__ import annotations

import secrets
import time

from ..lock import Lock, LockCapabilities
from .store import shared, store_name

__all__ = ["MemoryLock"]


class _Store:
    def __init__(self) -> None:
        self.held: dict[str, tuple[str, float]] = {}  # key -> (token, expires at)


class MemoryLock(Lock):
    """In-process lock; ``memory://name`` instances with the same name share keys."""

    capabilities = LockCapabilities(in_process=True)

    @property
    def _store(self) -> _Store:
        return shared(_Store, store_name(self.url), _Store)

    async def acquire(self, key: str, ttl: float, value: str | None = None) -> str | None:
        held = self._store.held
        now = time.monotonic()
        current = held.get(key)
        if current is not None and current[1] > now:
            return None
        token = value or secrets.token_hex(16)
        held[key] = (token, now + ttl)
        return token

    async def release(self, key: str, token: str) -> bool:
        held = self._store.held
        current = held.get(key)
        if current is None or current[0] != token:
            return False
        del held[key]
        return True
