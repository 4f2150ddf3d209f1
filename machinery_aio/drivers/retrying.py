"""Riding out a lost connection: retry an operation with back-off while the server is away."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["OUTAGE_BUDGET", "retry_while_down"]

T = TypeVar("T")

OUTAGE_BUDGET = 60.0
"""Seconds an operation keeps retrying before its connection error is raised."""


async def retry_while_down(
    operation: Callable[[], Awaitable[T]],
    retryable: Callable[[Exception], bool],
    what: str,
    logger: logging.Logger,
    budget: float | None = None,
) -> T:
    """Run ``operation``; on an error ``retryable`` accepts (a lost or refused connection) run it again
    after 0.05, 0.1, 0.2 ... 2 s, for up to ``budget`` seconds (default
    :data:`OUTAGE_BUDGET`), then raise the last error.
    ``operation`` must be safe to repeat (a write whose reply was lost may have happened).
    """
    deadline = time.monotonic() + (OUTAGE_BUDGET if budget is None else budget)
    delay = 0.05
    warned = False
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not retryable(exc) or time.monotonic() + delay > deadline:
                raise
            if not warned:
                logger.warning("%s: %s; retrying until the server is back", what, exc or type(exc).__name__)
                warned = True
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
