"""TaskCounts: how many runs a worker finished, by outcome (for heartbeats and summaries)."""

from __future__ import annotations

from .state import State

__all__ = ["TaskCounts"]


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
