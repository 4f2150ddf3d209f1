"""The lock interface used by periodic tasks (one lock per tick) and chords."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Lock"]


class Lock(ABC):
    """A distributed lock keyed by name, with an expiry."""

    scheme: ClassVar[str] = ""

    def __init__(self, config: Config, url: str | None = None) -> None:
        self.config = config
        self.url = url or config.lock or "memory://"

    async def connect(self) -> None:
        """Open connections; idempotent."""

    async def close(self) -> None:
        """Close connections."""

    @abstractmethod
    async def acquire(self, key: str, ttl: float, value: str | None = None) -> str | None:
        """Take ``key`` for ``ttl`` seconds if nobody holds it.

        Returns the token to release with (``value`` if given, else a random
        one), or None if the lock is held.
        """

    @abstractmethod
    async def release(self, key: str, token: str) -> bool:
        """Release ``key`` only if it still holds ``token``; True if released."""

    async def acquire_with_retries(
        self,
        key: str,
        ttl: float,
        *,
        retries: int = 3,
        interval: float = 0.2,
        value: str | None = None,
    ) -> str | None:
        """:meth:`acquire`, tried ``retries`` more times ``interval`` s apart."""
        for attempt in range(retries + 1):
            token = await self.acquire(key, ttl, value)
            if token is not None:
                return token
            if attempt < retries:
                await asyncio.sleep(interval)
        return None

    def describe(self) -> str:
        from ..urls import mask_url

        return mask_url(self.url)
