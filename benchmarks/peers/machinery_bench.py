"""machinery-aio: ``@server.task``, ``add.delay``, ``server.send_tasks``, ``result.get``.

Workers run as ``machinery-aio worker -A benchmarks.peers.machinery_bench:server``;
on ``memory://`` the worker is embedded in the producer's process (it has no other way).
Only names every version exports are imported, so an earlier release (``--baseline``)
runs through this same adapter. With ``BENCH_MIDDLEWARE=1`` the server gets one no-op
middleware with all four hooks (the ``machinery-aio+mw`` target).
"""

from __future__ import annotations

import os
from importlib.metadata import version
from typing import Any

import machinery_aio
from benchmarks.protocol import ENV_BACKEND, ENV_QUEUE, ENV_URL, Adapter, Unavailable, env
from machinery_aio import AsyncResult, Config, ConfigError, MissingExtraError, Server, Task, Worker

MIDDLEWARE = os.environ.get("BENCH_MIDDLEWARE") == "1"


def make_server(url: str, backend: str, queue: str) -> tuple[Server, Task[[int, int], int]]:
    url = url.replace("{queue}", queue)  # Pub/Sub: the phase's own subscription
    server = Server(Config(broker=url, result_backend=backend, default_queue=queue))
    if MIDDLEWARE:
        server.add_middleware(_noop_middleware())

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    return server, add


def _noop_middleware() -> Any:
    base: Any = getattr(machinery_aio, "Middleware")  # noqa: B009 - absent before issue 11

    class NoOp(base):  # type: ignore[misc]
        async def before_publish(self, signature: Any) -> None:
            return None

        async def after_publish(self, signature: Any) -> None:
            return None

        async def before_task(self, ctx: Any) -> None:
            return None

        async def after_task(self, ctx: Any, outcome: Any) -> None:
            return None

    return NoOp()


server, add = make_server(
    env(ENV_URL, "memory://"), env(ENV_BACKEND, "memory://"), env(ENV_QUEUE, "machinery_tasks")
)


class MachineryAdapter(Adapter):
    library = "machinery-aio"
    batch_api = "server.send_tasks"

    def __init__(self, url: str, backend: str, queue: str, concurrency: int) -> None:
        super().__init__(url, backend, queue, concurrency)
        self.in_process = url.startswith("memory")
        self.worker: Worker | None = None
        try:
            self.server, self.add = make_server(url, backend, queue)
        except (ConfigError, MissingExtraError) as exc:
            raise Unavailable(str(exc)) from None

    def version(self) -> str:
        return version("machinery-aio")

    async def setup(self) -> None:
        try:
            await self.server.connect()
        except OSError as exc:
            raise Unavailable(f"cannot connect: {exc}") from None

    async def close(self) -> None:
        await self.server.close()

    async def cleanup(self) -> None:
        if self.in_process:
            return
        await self.server.broker.purge(self.queue)
        if self.url.startswith("amqp"):  # the suite does not flush RabbitMQ: drop the phase's queue
            import aio_pika

            connection = await aio_pika.connect(self.url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.queue)

    async def enqueue(self, x: int) -> AsyncResult[int]:
        return await self.add.delay(x, 1)

    async def enqueue_batch(self, xs: list[int]) -> list[AsyncResult[Any]]:
        return await self.server.send_tasks([self.add.signature(x, 1) for x in xs])

    async def is_done(self, handle: AsyncResult[int]) -> bool:
        return (await handle.get_state()).is_completed()

    async def result(self, handle: AsyncResult[int], timeout: float) -> int:
        return await handle.get(timeout=timeout)

    def worker_command(self) -> list[str]:
        import sys

        return [
            sys.executable,
            "-m",
            "machinery_aio",
            "worker",
            "-A",
            "benchmarks.peers.machinery_bench:server",
            "--concurrency",
            str(self.concurrency),
            "--queue",
            self.queue,
            "--no-scheduler",
            "--loglevel",
            "WARNING",
        ]

    async def start_in_process(self) -> None:
        self.worker = self.server.new_worker("bench", self.concurrency, self.queue, run_scheduler=False)
        await self.worker.start()

    async def stop_in_process(self) -> None:
        if self.worker is not None:
            await self.worker.stop()


ADAPTER = MachineryAdapter
