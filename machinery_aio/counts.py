"""TaskCounts: how many runs a worker finished, by outcome; and WorkerView, what heartbeats,
summaries and metrics read of a worker (so they need not import the worker)."""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from .drivers.broker import Broker
from .state import State

__all__ = ["TaskCounts", "WorkerView"]

RECENT_FAILURES = 10
"""How many of a worker's latest failures it keeps (and reports in its heartbeat)."""
ERROR_CHARS = 500


class TaskCounts:
    """Runs finished since the worker started: ``succeeded``, ``failed`` (final failures) and
    ``retried`` (runs that failed or asked to run again and will)."""

    __slots__ = ("failed", "recent_failures", "retried", "succeeded")

    def __init__(self) -> None:
        self.succeeded = self.failed = self.retried = 0
        self.recent_failures: deque[tuple[float, str, str, str]] = deque(maxlen=RECENT_FAILURES)
        """(Unix time, task UUID, task name, error) of the latest final failures."""

    def add(self, state: State) -> None:
        if state is State.SUCCESS:
            self.succeeded += 1
        elif state is State.FAILURE:
            self.failed += 1
        else:
            self.retried += 1

    def note_failure(self, task_uuid: str, task_name: str, error: str) -> None:
        """Remember a final failure (the dashboard shows the latest, from heartbeats)."""
        self.recent_failures.append((time.time(), task_uuid, task_name, error[:ERROR_CHARS]))

    @property
    def processed(self) -> int:
        """Every run that finished, whatever its outcome."""
        return self.succeeded + self.failed + self.retried

    def __repr__(self) -> str:
        return f"<TaskCounts succeeded={self.succeeded} failed={self.failed} retried={self.retried}>"


class _RunnerView(Protocol):
    @property
    def counts(self) -> TaskCounts: ...


class WorkerView(Protocol):
    """The parts of a :class:`~machinery_aio.worker.Worker` that observers read."""

    @property
    def tag(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def running_tasks(self) -> int: ...

    @property
    def runner(self) -> _RunnerView: ...

    @property
    def broker(self) -> Broker: ...
