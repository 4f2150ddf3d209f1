"""SAQ: ``queue.enqueue``, ``job.refresh(until_complete=...)`` (woken by pub/sub), ``saq module.settings``.

SAQ keeps the result on the job. It has no bulk enqueue call (``queue.map`` sends one by one and
waits for every result), so batched enqueue is n/a.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from saq import Job, Queue, Status

from benchmarks.protocol import ENV_CONCURRENCY, ENV_QUEUE, ENV_URL, Adapter, env


async def add(ctx: dict[str, Any], *, x: int, y: int) -> int:
    return x + y


settings = {
    "queue": Queue.from_url(env(ENV_URL, "redis://127.0.0.1:6379/15"), name=env(ENV_QUEUE, "default")),
    "functions": [add],
    "concurrency": int(env(ENV_CONCURRENCY, "50")),
}


class SaqAdapter(Adapter):
    library = "saq"
    notes = "no bulk enqueue; job.refresh(until_complete) waits on pub/sub"

    def version(self) -> str:
        return version("saq")

    async def setup(self) -> None:
        self.q = Queue.from_url(self.url, name=self.queue)
        await self.q.connect()

    async def close(self) -> None:
        await self.q.disconnect()

    async def enqueue(self, x: int) -> Job:
        job = await self.q.enqueue("add", x=x, y=1)
        assert job is not None
        return job

    async def is_done(self, handle: Job) -> bool:
        job = await self.q.job(handle.key)
        return job is not None and job.status is Status.COMPLETE

    async def result(self, handle: Job, timeout: float) -> Any:
        await handle.refresh(until_complete=timeout)
        return handle.result

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "saq", "benchmarks.peers.saq_bench.settings", "--quiet"]


ADAPTER = SaqAdapter
