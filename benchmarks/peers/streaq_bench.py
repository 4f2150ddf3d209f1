"""streaq: ``add.enqueue(x, 1)``, ``worker.enqueue_many`` (one pipeline), ``task.result()`` (pub/sub),
``streaq run module:worker``. Results are stored in Redis by default.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from importlib.metadata import version
from typing import Any

from streaq import Worker
from streaq.task import Task, TaskStatus

from benchmarks.protocol import ENV_CONCURRENCY, ENV_QUEUE, ENV_URL, Adapter, env


def make_worker(url: str, queue: str, concurrency: int) -> tuple[Worker[Any], Any]:
    app: Worker[Any] = Worker(redis_url=url, queue_name=queue, concurrency=concurrency)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    return app, add


worker, add = make_worker(
    env(ENV_URL, "redis://127.0.0.1:6379/15"), env(ENV_QUEUE, "default"), int(env(ENV_CONCURRENCY, "50"))
)


class StreaqAdapter(Adapter):
    library = "streaq"
    batch_api = "worker.enqueue_many"

    def version(self) -> str:
        return version("streaq")

    async def setup(self) -> None:
        self.app, self.add = make_worker(self.url, self.queue, self.concurrency)
        self.stack = AsyncExitStack()
        await self.stack.enter_async_context(self.app)

    async def close(self) -> None:
        await self.stack.aclose()

    async def enqueue(self, x: int) -> Task[Any, int]:
        task: Task[Any, int] = await self.add.enqueue(x, 1)
        return task

    async def enqueue_batch(self, xs: list[int]) -> list[Any]:
        tasks = [self.add.enqueue(x, 1) for x in xs]
        await self.app.enqueue_many(tasks)
        return tasks

    async def is_done(self, handle: Task[Any, int]) -> bool:
        return await handle.status() == TaskStatus.DONE

    async def result(self, handle: Task[Any, int], timeout: float) -> Any:
        return (await handle.result(timeout=int(timeout) or 1)).result

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "streaq", "run", "benchmarks.peers.streaq_bench:worker"]


ADAPTER = StreaqAdapter
