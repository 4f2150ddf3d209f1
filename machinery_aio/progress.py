"""Progress reports from running tasks: ``await ctx.set_progress(current, total, message)``.

A report is stored as the task's STARTED state with a ``"Progress"`` key after Go's seven
(Go's JSON decoder ignores it), written the way a worker writes STARTED, so it never
replaces SUCCESS or FAILURE. Reports closer together than :data:`MIN_INTERVAL` are
dropped, except the one that reaches the total, so a tight loop does not flood the
backend; the final state replaces the last report.
"""

from __future__ import annotations

import math
import time

from .drivers.backend import ResultBackend
from .signature import Signature
from .state import Progress, State, TaskState

__all__ = ["MIN_INTERVAL", "ProgressReporter", "check_progress"]

MIN_INTERVAL = 0.5
"""Seconds between two stored reports of one task."""


def check_progress(current: float, total: float | None, message: str) -> Progress:
    """The Progress to store; raises TypeError or ValueError for values that are not one."""
    for name, value in (("current", current), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"set_progress: {name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"set_progress: {name} must be a finite number of 0 or more, got {value!r}")
    if not isinstance(message, str):
        raise TypeError(f"set_progress: message must be a string, got {type(message).__name__}")
    return Progress(current=current, total=total, message=message)


class ProgressReporter:
    """Stores one run's progress reports, throttled."""

    __slots__ = ("_last", "backend", "signature")

    def __init__(self, backend: ResultBackend, signature: Signature) -> None:
        self.backend = backend
        self.signature = signature
        self._last = -math.inf

    async def report(self, current: float, total: float | None = None, message: str = "") -> bool:
        """Store the report unless one was stored less than MIN_INTERVAL s ago (and this one
        does not reach the total); True if it was stored."""
        progress = check_progress(current, total, message)
        now = time.monotonic()
        done = total is not None and current >= total
        if now - self._last < MIN_INTERVAL and not done:
            return False
        self._last = now
        state = TaskState.new(self.signature, State.STARTED)
        state.progress = progress
        written = await self.backend.set_states_soon((state,))
        await written
        return True
