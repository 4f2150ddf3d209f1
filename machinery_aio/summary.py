"""What a person at a terminal sees: a worker's periodic one-line summary, and the states a
task goes through while ``machinery-aio send`` waits for it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, TextIO

from .counts import WorkerView
from .state import State

if TYPE_CHECKING:
    from .result import AsyncResult

__all__ = ["SUMMARY_INTERVAL", "Progress", "TerminalSummary"]

SUMMARY_INTERVAL = 5.0
"""Seconds between a worker's summary lines."""


class TerminalSummary:
    """A worker service that writes ``processed N (+n, r/s), failed F, retried R, running X``
    to ``stream`` every ``interval`` seconds."""

    def __init__(self, worker: WorkerView, stream: TextIO, interval: float = SUMMARY_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the summary interval must be positive")
        self.worker = worker
        self.stream = stream
        self.interval = interval
        self._last = (time.monotonic(), 0)

    def line(self) -> str:
        """The summary now; the rate is over the time since the previous line."""
        counts = self.worker.runner.counts
        now, processed = time.monotonic(), counts.processed
        since, before = self._last
        self._last = (now, processed)
        rate = (processed - before) / (now - since) if now > since else 0.0
        return (
            f"[{self.worker.tag}] processed {processed} (+{processed - before}, {rate:.1f}/s), "
            f"failed {counts.failed}, retried {counts.retried}, running {self.worker.running_tasks}"
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            print(self.line(), file=self.stream, flush=True)


class Progress:
    """Writes each state a task reaches (``PENDING``, ``STARTED`` ... ``SUCCESS``) to ``stream``
    with the seconds since it was created, each state once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.seen: State | None = None

    def show(self, state: State) -> None:
        if state is not self.seen:
            print(
                f"  {state.value} after {time.monotonic() - self.started:.1f} s", file=self.stream, flush=True
            )
            self.seen = state

    async def watch(self, result: AsyncResult[Any], interval: float = 0.5) -> None:
        """Read the task's state every ``interval`` seconds until it is done (or this is
        cancelled); a read that fails is skipped."""
        while self.seen not in (State.SUCCESS, State.FAILURE):
            try:
                self.show((await result.get_state()).state)
            except Exception:
                pass
            await asyncio.sleep(interval)
