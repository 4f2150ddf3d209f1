"""TaskCounts: how many runs a worker finished, by outcome; and WorkerView, what heartbeats,
summaries and metrics read of a worker (so they need not import the worker)."""

from __future__ import annotations

from typing import Protocol

from .drivers.broker import Broker
from .state import State

__all__ = ["TaskCounts", "WorkerView"]


class TaskCounts:
    """Runs finished since the worker started: ``succeeded``, ``failed`` (final failures) and
    ``retried`` (runs that failed or asked to run again and will)."""

    __slots__ = ("failed", "retried", "succeeded")

    def __init__(self) -> None:
        self.succeeded = self.failed = self.retried = 0

    def add(self, state: State) -> None:
        if state is State.SUCCESS:
            self.succeeded += 1
        elif state is State.FAILURE:
            self.failed += 1
        else:
            self.retried += 1

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
