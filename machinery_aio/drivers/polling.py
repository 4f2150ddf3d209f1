"""Waiting for a final state on a backend that cannot (always) notify: re-read the state
with a short pause that grows to a cap (Memcache always; MongoDB without change streams)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..state import TaskState

__all__ = ["FIRST_PAUSE", "MAX_PAUSE", "wait_by_reading"]

FIRST_PAUSE = 0.005
"""Seconds before the first re-read: a short task is seen almost at once."""
MAX_PAUSE = 0.1
"""The cap: a waiter re-reads at most 10 times a second, and sees a final state at most
this late."""


async def wait_by_reading(
    read: Callable[[], Awaitable[TaskState | None]],
    pause: Callable[[float], Awaitable[object]],
    task_uuid: str,
    timeout: float | None,
    *,
    first: float = FIRST_PAUSE,
    cap: float = MAX_PAUSE,
) -> TaskState:
    """Call ``read`` until it returns a SUCCESS or FAILURE state, with ``pause(seconds)``
    between reads (``asyncio.sleep``, or a wait a notification may end early). The pause
    starts at ``first`` and grows by half each time up to ``cap``. Raises TimeoutError."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wait = first
    while True:
        state = await read()
        if state is not None and state.is_completed():
            return state
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
            await pause(min(wait, left))
        else:
            await pause(wait)
        wait = min(cap, wait * 1.5)
