"""A small app on the embedded memory:// broker, for the CLI and worker-subprocess tests.

``python -m machinery_aio worker -A tests.apps.memory_app:server`` runs it.
memory:// lives inside one process, so a test that needs work done in a worker
subprocess names it in the environment variable ``MEMORY_APP_SEED``
(``"sleep:0.5;add:1:2"``): those tasks are sent as soon as the worker connects.
Tasks print ``started NAME`` and ``finished NAME`` lines on stdout.
"""

from __future__ import annotations

import asyncio
import os
import sys

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker


def say(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()


class SeedingServer(Server):
    """Sends the tasks named in MEMORY_APP_SEED once, right after connecting."""

    _seeded = False

    async def connect(self) -> None:
        await super().connect()
        seed = os.environ.get("MEMORY_APP_SEED", "")
        if self._seeded or not seed:
            return
        self._seeded = True
        for item in filter(None, seed.split(";")):
            name, *values = item.split(":")
            args = [Arg.of(float(v) if "." in v else int(v)) for v in values]
            await self.send_task(Signature(name=name, args=args))


CONFIG = Config(
    broker="memory://memory-app", result_backend="memory://memory-app", default_queue="memory_app_tasks"
)
server = SeedingServer(CONFIG)


@server.task("add")
async def add(*values: int) -> int:
    return sum(values)


@server.task("fail")
async def fail(message: str) -> None:
    raise ValueError(message)


@server.task("sleep")
async def sleep(seconds: float) -> str:
    say("started sleep")
    await asyncio.sleep(seconds)
    say("finished sleep")
    return "slept"


@server.task("pair")
def pair(a: int) -> tuple[int, str]:
    return a, str(a)


# A server whose configured URLs carry passwords (for the banner); the work runs in memory.
SECRET_CONFIG = Config(
    broker="amqp://guest:hunter2@rabbit.example:5672/",
    result_backend="redis://:hunter2@redis.example:6379/6",
    default_queue="memory_app_secret",
)
secret = Server(
    SECRET_CONFIG,
    broker=MemoryBroker(SECRET_CONFIG, "memory://memory-app-secret"),
    backend=MemoryBackend(SECRET_CONFIG, "memory://memory-app-secret"),
)
secret.register_task("add", add.fn)


def make_server() -> Server:
    """An app factory: ``-A tests.apps.memory_app:make_server``."""
    return server


not_a_server = "just a string"
