"""TaskContext: what a running task can know about its own invocation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .retry import RetryTaskLater
from .signature import Signature

__all__ = ["TaskContext"]


@dataclass(slots=True)
class TaskContext:
    """Passed as the first argument to a task whose first parameter is annotated with it.

    The Python twin of the ``context.Context`` a Go task may take.
    """

    signature: Signature
    worker_tag: str = ""
    logger: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.LoggerAdapter(logging.getLogger("machinery_aio.task"))
    )

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

    def retry_later(self, msg: str = "retry later", delay: float = 1.0) -> RetryTaskLater:
        """Build the exception to ``raise`` to run this task again after ``delay`` s."""
        return RetryTaskLater(msg, delay)
