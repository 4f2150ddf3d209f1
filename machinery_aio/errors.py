"""Exceptions raised to callers of machinery-aio."""

from __future__ import annotations

__all__ = [
    "ConnectionFailedError",
    "MachineryError",
    "TaskFailedError",
    "TaskNotRegisteredError",
    "TaskRevokedError",
    "TaskTimeLimitExceeded",
]


class MachineryError(Exception):
    """Base class of machinery-aio's own errors."""


class TaskFailedError(MachineryError):
    """The awaited task ended in FAILURE; ``error`` is the task's error text."""

    def __init__(self, task_uuid: str, error: str, task_name: str = "") -> None:
        name = f"{task_name} " if task_name else ""
        super().__init__(f"task {name}{task_uuid} failed: {error}")
        self.task_uuid = task_uuid
        self.task_name = task_name
        self.error = error


class TaskRevokedError(TaskFailedError):
    """The awaited task was revoked (``server.revoke``): it never ran, or was cancelled."""


class TaskNotRegisteredError(MachineryError, KeyError):
    """No task of that name is registered with the server."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class TaskTimeLimitExceeded(MachineryError, TimeoutError):
    """A task ran longer than its time limit and was cancelled."""


class ConnectionFailedError(MachineryError, ConnectionError):
    """The broker or result backend could not be reached; the message names it (masked)."""
