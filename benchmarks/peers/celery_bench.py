"""Celery with the Redis broker and the Redis result backend: ``add.delay``, ``group(...).apply_async()``,
``result.get()`` (pub/sub), ``celery -A ... worker --pool threads --concurrency 50``.

The threads pool is used: for a no-op task it drains faster than prefork with 50 processes on
this size of machine (set BENCH_CELERY_POOL=prefork to compare).
"""

from __future__ import annotations

import os
import sys
import uuid
from importlib.metadata import version
from typing import Any

from celery import Celery, group
from celery.result import AsyncResult

from benchmarks.protocol import ENV_BACKEND, ENV_QUEUE, ENV_URL, Adapter, env

POOL = os.environ.get("BENCH_CELERY_POOL", "threads")


def make_app(url: str, backend: str, queue: str) -> tuple[Celery, Any]:
    app = Celery("bench", broker=url, backend=backend)
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return app, add


app, add = make_app(
    env(ENV_URL, "redis://127.0.0.1:6379/15"),
    env(ENV_BACKEND, "redis://127.0.0.1:6379/15"),
    env(ENV_QUEUE, "celery"),
)


class CeleryAdapter(Adapter):
    library = "celery"
    batch_api = "group(...).apply_async()"
    notes = f"{POOL} pool"

    def version(self) -> str:
        return version("celery")

    async def setup(self) -> None:
        self.app, self.add = make_app(self.url, self.backend, self.queue)

    async def close(self) -> None:
        self.app.close()

    async def cleanup(self) -> None:
        if self.url.startswith("amqp"):
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.queue)

    async def enqueue(self, x: int) -> AsyncResult:
        return self.add.delay(x, 1)

    async def enqueue_batch(self, xs: list[int]) -> list[Any]:
        return list(group(self.add.s(x, 1) for x in xs).apply_async().results)

    async def is_done(self, handle: AsyncResult) -> bool:
        return bool(handle.ready())

    async def result(self, handle: AsyncResult, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def worker_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.peers.celery_bench",
            "worker",
            "--pool",
            POOL,
            "--concurrency",
            str(self.concurrency),
            "--queues",
            self.queue,
            "--loglevel",
            "WARNING",
            "--hostname",
            f"{self.queue}-{uuid.uuid4().hex[:6]}@%h",
        ]


ADAPTER = CeleryAdapter
