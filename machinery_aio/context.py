"""TaskContext: what a running task can know about its own invocation."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .retry import RetryTaskLater
from .signature import Signature

__all__ = ["TaskContext"]

_TASK_LOGGER = logging.getLogger("machinery_aio.task")


class TaskContext:
    """Passed as the first argument to a task whose first parameter is annotated with it,
    and to middlewares' ``before_task`` and ``after_task``.

    The Python twin of the ``context.Context`` a Go task may take.
    """

    __slots__ = ("_logger", "_progress", "data", "signature", "worker_tag")

    def __init__(self, signature: Signature, worker_tag: str = "") -> None:
        self.signature = signature
        self.worker_tag = worker_tag
        self.data: dict[str, Any] = {}
        """Per-run values a middleware carries from ``before_task`` to ``after_task``."""
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._progress: Callable[[float, float | None, str], Awaitable[bool]] | None = None

    @property
    def task_uuid(self) -> str:
        return self.signature.uuid

    @property
    def task_name(self) -> str:
        return self.signature.name

    @property
    def retry_count(self) -> int:
        """Retries left (Go's ``RetryCount``, which counts down)."""
        return self.signature.retry_count

    @property
    def headers(self) -> dict[str, Any]:
        return self.signature.headers if self.signature.headers is not None else {}

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry ``task_name`` and ``task_uuid``."""
        if self._logger is None:
            extra = {"task_name": self.signature.name, "task_uuid": self.signature.uuid}
            self._logger = logging.LoggerAdapter(_TASK_LOGGER, extra)
        return self._logger

    async def set_progress(self, current: float, total: float | None = None, message: str = "") -> None:
        """Report how far the task got; ``(await result.get_state()).progress`` reads it.

        Stored beside the task's state (a Go reader ignores it), at most every 0.5 s (the
        report that reaches ``total`` always); outside a worker it does nothing. Raises
        TypeError or ValueError for values that are not numbers of 0 or more.
        """
        if self._progress is None:
            from .progress import check_progress

            check_progress(current, total, message)
            return
        await self._progress(current, total, message)

    def retry_later(self, msg: str = "retry later", delay: float = 1.0) -> RetryTaskLater:
        """Build the exception to ``raise`` to run this task again after ``delay`` s."""
        return RetryTaskLater(msg, delay)

    def __repr__(self) -> str:
        return f"<TaskContext {self.signature.name} {self.signature.uuid}>"
