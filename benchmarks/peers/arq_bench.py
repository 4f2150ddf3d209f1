"""arq: ``pool.enqueue_job``, ``job.result()`` (polls every 0.5 s by default), the ``arq`` CLI.

arq has no bulk enqueue call (n/a). Results are kept by default (keep_result 3600 s).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from benchmarks.protocol import ENV_CONCURRENCY, ENV_QUEUE, ENV_URL, Adapter, env


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


class WorkerSettings:
    functions = [add]
    redis_settings = RedisSettings.from_dsn(env(ENV_URL, "redis://127.0.0.1:6379/15"))
    queue_name = env(ENV_QUEUE, "arq:queue")
    max_jobs = int(env(ENV_CONCURRENCY, "50"))


class ArqAdapter(Adapter):
    library = "arq"
    notes = "no bulk enqueue; job.result() and the worker poll every 0.5 s (defaults)"

    def version(self) -> str:
        return version("arq")

    async def setup(self) -> None:
        self.pool: ArqRedis = await create_pool(
            RedisSettings.from_dsn(self.url), default_queue_name=self.queue
        )

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue(self, x: int) -> Job:
        job = await self.pool.enqueue_job("add", x, 1)
        assert job is not None
        return job

    async def is_done(self, handle: Job) -> bool:
        return await handle.result_info() is not None

    async def result(self, handle: Job, timeout: float) -> Any:
        return await handle.result(timeout=timeout)

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "arq", "benchmarks.peers.arq_bench.WorkerSettings"]


ADAPTER = ArqAdapter
