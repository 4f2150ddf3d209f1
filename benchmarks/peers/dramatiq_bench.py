"""dramatiq: RedisBroker with the Results middleware and RedisBackend, ``add.send``,
``group(...).run()`` for many, ``message.get_result(block=True)``,
``dramatiq module --processes 1 --threads 50`` (dramatiq's workers are threads; actors are sync).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import dramatiq
from dramatiq import Message, group
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import ResultMissing, Results
from dramatiq.results.backends import RedisBackend

from benchmarks.protocol import ENV_BACKEND, ENV_QUEUE, ENV_URL, Adapter, env


def _add(x: int, y: int) -> int:
    return x + y


def make_broker(url: str, backend_url: str, queue: str) -> tuple[RedisBroker, RedisBackend, Any]:
    broker = RedisBroker(url=url)
    backend = RedisBackend(url=backend_url)
    broker.add_middleware(Results(backend=backend))
    actor = dramatiq.actor(_add, actor_name="add", queue_name=queue, store_results=True, broker=broker)
    return broker, backend, actor


broker, backend, add = make_broker(
    env(ENV_URL, "redis://127.0.0.1:6379/15"),
    env(ENV_BACKEND, "redis://127.0.0.1:6379/15"),
    env(ENV_QUEUE, "default"),
)
dramatiq.set_broker(broker)


class DramatiqAdapter(Adapter):
    library = "dramatiq"
    batch_api = "group(...).run()"
    notes = "sync actors on 50 threads; group.run() sends messages one by one"

    def version(self) -> str:
        return version("dramatiq")

    async def setup(self) -> None:
        self.broker, self.results, self.add = make_broker(self.url, self.backend, self.queue)

    async def close(self) -> None:
        self.broker.close()

    async def enqueue(self, x: int) -> Message[int]:
        message: Message[int] = self.add.send(x, 1)
        return message

    async def enqueue_batch(self, xs: list[int]) -> list[Any]:
        messages = [self.add.message(x, 1) for x in xs]
        group(messages, broker=self.broker).run()
        return messages

    async def is_done(self, handle: Message[int]) -> bool:
        try:
            self.results.get_result(handle, block=False)
        except ResultMissing:
            return False
        return True

    async def result(self, handle: Message[int], timeout: float) -> Any:
        return handle.get_result(backend=self.results, block=True, timeout=int(timeout * 1000))

    def worker_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "benchmarks.peers.dramatiq_bench",
            "--processes",
            "1",
            "--threads",
            str(self.concurrency),
            "--queues",
            self.queue,
        ]


ADAPTER = DramatiqAdapter
