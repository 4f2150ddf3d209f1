"""Small helpers for the Redis tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from machinery_aio import Arg, Signature


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """Await ``check()`` until it returns something truthy; fail after ``timeout`` s (a hang
    guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


def sig(uuid: str, name: str, *values: Any, **fields: Any) -> Signature:
    return Signature(uuid=uuid, name=name, args=[Arg.of(v) for v in values], **fields)
