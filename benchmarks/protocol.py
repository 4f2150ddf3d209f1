"""What every library's adapter implements, so one driver can measure them all the same way.

An adapter module (``benchmarks/peers/*_bench.py``) defines ``ADAPTER``: a subclass of
:class:`Adapter`. The same module is the worker's application: it defines the no-op task
``add(x, 1)`` at import time from the ``BENCH_*`` environment variables that the driver
sets for the worker processes it starts.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

ENV_URL = "BENCH_URL"
ENV_BACKEND = "BENCH_BACKEND"
ENV_QUEUE = "BENCH_QUEUE"
ENV_CONCURRENCY = "BENCH_CONCURRENCY"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


class Unavailable(Exception):
    """This target cannot run here (driver missing, server down); the message says why."""


class Adapter(ABC):
    """One library on one broker, driven by :mod:`benchmarks.driver`."""

    library: ClassVar[str] = ""
    batch_api: ClassVar[str] = ""
    """The documented bulk-enqueue call; empty when the library has none (reported n/a)."""
    in_process: bool = False
    """True when the worker must share the producer's process (``memory://``)."""
    notes: ClassVar[str] = ""

    def __init__(self, url: str, backend: str, queue: str, concurrency: int) -> None:
        self.url = url
        self.backend = backend
        self.queue = queue
        self.concurrency = concurrency

    def worker_env(self) -> dict[str, str]:
        return {
            ENV_URL: self.url,
            ENV_BACKEND: self.backend,
            ENV_QUEUE: self.queue,
            ENV_CONCURRENCY: str(self.concurrency),
        }

    @abstractmethod
    def version(self) -> str:
        """The library's installed version."""

    async def setup(self) -> None:
        """Open the producer's connections; raise :class:`Unavailable` when it cannot run."""

    async def close(self) -> None:
        """Close the producer's connections."""

    async def cleanup(self) -> None:
        """Remove what this phase left on a broker the suite does not flush (RabbitMQ queues)."""

    @abstractmethod
    async def enqueue(self, x: int) -> Any:
        """Send ``add(x, 1)``; return a handle for its result."""

    async def enqueue_batch(self, xs: list[int]) -> list[Any]:
        """Send ``add(x, 1)`` for every x with the library's bulk call (only if ``batch_api``)."""
        raise NotImplementedError

    @abstractmethod
    async def is_done(self, handle: Any) -> bool:
        """True once the task's result is stored (one cheap, non-blocking look)."""

    @abstractmethod
    async def result(self, handle: Any, timeout: float) -> Any:
        """Wait for the result the way the library's docs show."""

    def worker_command(self) -> list[str]:
        """argv that starts one worker process with ``concurrency`` slots."""
        raise NotImplementedError

    async def start_in_process(self) -> None:
        """Start the worker inside this process (only for ``in_process`` adapters)."""
        raise NotImplementedError

    async def stop_in_process(self) -> None:
        raise NotImplementedError
