"""Retries: Go Machinery's Fibonacci back-off, and RetryTaskLater."""

from __future__ import annotations

__all__ = ["RetryTaskLater", "fibonacci_next"]


def fibonacci_next(current: int) -> int:
    """The smallest Fibonacci number (1, 1, 2, 3, 5, 8 ...) strictly above ``current``.

    Retry delays from ``RetryTimeout`` 0 are therefore 1, 2, 3, 5, 8, 13 ... s.
    """
    a, b = 1, 1
    while a <= current:
        a, b = b, a + b
    return a


class RetryTaskLater(Exception):
    """Raise from a task to run it again after ``delay`` seconds.

    As Go's ``ErrRetryTaskLater``: the task is re-published with the same UUID
    and its state is RETRY meanwhile; ``RetryCount`` is not used up. A task can
    read :attr:`TaskContext.retry_count` to decide when to stop.
    """

    def __init__(self, msg: str = "retry later", delay: float = 1.0) -> None:
        if delay < 0:
            raise ValueError("RetryTaskLater delay must not be negative")
        super().__init__(msg)
        self.msg = msg
        self.delay = float(delay)

    def __str__(self) -> str:
        return f"Task error: {self.msg} Will retry in: {self.delay:g}s"
