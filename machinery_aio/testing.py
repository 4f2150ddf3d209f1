"""Helpers for testing applications that use machinery-aio.

server = testing.memory_server()          # isolated memory:// broker and backend
async with testing.running_worker(server) as worker:
    result = await add.delay(1, 2)
    assert await result.get(timeout=5) == 3
    await testing.wait_idle(worker)      # every fetched task finished
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .config import Config
from .server import Server
from .worker import Worker

__all__ = ["memory_server", "running_worker", "wait_idle"]


def memory_server(name: str | None = None, **config: Any) -> Server:
    """A Server on its own ``memory://`` broker, backend and lock (a fresh name by default)."""
    store = name or f"test-{uuid.uuid4().hex[:12]}"
    url = f"memory://{store}"
    return Server(Config(broker=url, result_backend=url, lock=url, **config))


@asynccontextmanager
async def running_worker(server: Server, concurrency: int = 10, **options: Any) -> AsyncIterator[Worker]:
    """Run a worker for the duration of the block; it is stopped (gracefully) afterwards."""
    async with server.new_worker("test-worker", concurrency, **options) as worker:
        yield worker


async def wait_idle(worker: Worker, timeout: float = 10.0, settle: float = 0.05) -> None:
    """Wait until ``worker`` has had no running task for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if worker.running_tasks == 0:
            quiet_since = quiet_since or now
            if now - quiet_since >= settle:
                return
        else:
            quiet_since = None
        if now > deadline:
            raise TimeoutError(f"worker still has {worker.running_tasks} tasks after {timeout} s")
        await asyncio.sleep(0.01)
