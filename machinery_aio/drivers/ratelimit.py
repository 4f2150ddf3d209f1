"""The rate limiter interface (``machinery_aio/ratelimit.py`` says how limits work): a broker
that can share limits among its workers offers one (``Broker.rate_limiter()``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["Rate", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` runs per ``per`` seconds."""

    count: float
    per: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two starts."""
        return self.per / self.count

    def __str__(self) -> str:
        return self.text


class RateLimiter(ABC):
    """Gives limited runs their start times."""

    @abstractmethod
    async def acquire(self, name: str, rate: Rate, task_uuid: str) -> float:
        """Seconds until the run of ``task_uuid`` may start (0: now).

        A run told to wait is reserved under its UUID: asked again for the same UUID, the
        limiter gives the time left of that reservation, 0 once it is due (forgetting it),
        or, more than half an interval after it, a new turn.
        """
