"""The lock interface used by periodic tasks (one lock per tick)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Lock", "LockCapabilities"]


@dataclass(frozen=True, slots=True)
class LockCapabilities:
    """What a lock can do, where locks differ."""

    in_process: bool = False
    """Exclusive within this process only (``memory://``), not across processes or hosts."""


class Lock(ABC):
    """A distributed lock keyed by name, with an expiry."""

    capabilities: ClassVar[LockCapabilities] = LockCapabilities()

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

    def describe(self) -> str:
        """A one-line description for logs, with any password masked."""
        from ..urls import mask_url

        return mask_url(self.url)
