"""taskiq with taskiq-redis: RedisStreamBroker (acknowledged, like machinery-aio's at-least-once)
and RedisAsyncResultBackend; ``add.kiq``, ``task.wait_result()`` (checks every 0.2 s by default),
``taskiq worker --workers 1 --max-async-tasks 50``. taskiq has no bulk send (n/a).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from taskiq import AsyncTaskiqTask
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.protocol import ENV_BACKEND, ENV_QUEUE, ENV_URL, Adapter, env


def make_broker(url: str, backend: str, queue: str) -> RedisStreamBroker:
    broker = RedisStreamBroker(url, queue_name=queue, consumer_group_name=f"{queue}-group")
    return broker.with_result_backend(RedisAsyncResultBackend(backend, result_ex_time=3600))


broker = make_broker(
    env(ENV_URL, "redis://127.0.0.1:6379/15"),
    env(ENV_BACKEND, "redis://127.0.0.1:6379/15"),
    env(ENV_QUEUE, "taskiq"),
)


@broker.task(task_name="add")
async def add(x: int, y: int) -> int:
    return x + y


class TaskiqAdapter(Adapter):
    library = "taskiq"
    notes = "RedisStreamBroker + RedisAsyncResultBackend; wait_result polls every 0.2 s (default)"

    def version(self) -> str:
        return f"{version('taskiq')} (taskiq-redis {version('taskiq-redis')})"

    async def setup(self) -> None:
        self.broker = make_broker(self.url, self.backend, self.queue)
        self.task = self.broker.register_task(add.original_func, task_name="add")
        await self.broker.startup()

    async def close(self) -> None:
        await self.broker.shutdown()

    async def enqueue(self, x: int) -> AsyncTaskiqTask[int]:
        return await self.task.kiq(x, 1)

    async def is_done(self, handle: AsyncTaskiqTask[int]) -> bool:
        return await handle.is_ready()

    async def result(self, handle: AsyncTaskiqTask[int], timeout: float) -> Any:
        result = await handle.wait_result(timeout=timeout)
        return result.return_value

    def worker_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "benchmarks.peers.taskiq_bench:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(self.concurrency),
            "--log-level",
            "WARNING",
        ]


ADAPTER = TaskiqAdapter
