"""A small app on the embedded memory:// broker, for the CLI and worker-subprocess tests.

``python -m machinery_aio worker -A tests.apps.memory_app:server`` runs it.
memory:// lives inside one process, so a test that needs work done in a worker
subprocess names it in the environment variable ``MEMORY_APP_SEED``
(``"sleep:0.5;add:1:2"``): each worker sends those tasks once it has started.
Tasks print ``started NAME`` and ``finished NAME`` lines on stdout.

``CALLED`` notes every call of the objects here that ``-A`` must never call.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from machinery_aio import Arg, Config, Server, Signature, Worker
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker

CALLED: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()


class Seeder:
    """A worker's background service: sends the tasks named in MEMORY_APP_SEED, once."""

    def __init__(self, server: Server, seed: str) -> None:
        self.server = server
        self.seed = seed

    async def run(self) -> None:
        for item in filter(None, self.seed.split(";")):
            name, *values = item.split(":")
            args = [Arg.of(float(v) if "." in v else int(v)) for v in values]
            await self.server.send_task(Signature(name=name, args=args))


class SeedingServer(Server):
    """Its workers send the tasks named in MEMORY_APP_SEED once they have started."""

    def new_worker(
        self,
        tag: str = "",
        concurrency: int = 10,
        queue: str | None = None,
        *,
        run_scheduler: bool = True,
        **options: Any,
    ) -> Worker:
        worker = super().new_worker(tag, concurrency, queue, run_scheduler=run_scheduler, **options)
        seed = os.environ.get("MEMORY_APP_SEED", "")
        if seed:
            worker.services.append(Seeder(self, seed))
        return worker


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


# -- objects -A must refuse without calling them (each notes a call in CALLED) --------------


@server.task("touch")
def touch() -> Server:
    """A task (a Task handle): calling the handle would run it here."""
    CALLED.append("touch")
    return server


def needs_argument(name: str) -> Server:
    """A function with a required parameter: not a factory."""
    CALLED.append("needs_argument")
    return server


def returns_a_number() -> int:
    """A function annotated to return something other than a Server."""
    CALLED.append("returns_a_number")
    return 1


class NotAServer:
    """A class: calling it would build one."""

    def __init__(self) -> None:
        CALLED.append("NotAServer")


def returns_nothing_useful():  # type: ignore[no-untyped-def]
    """An unannotated factory that returns something else: called, then refused."""
    CALLED.append("returns_nothing_useful")
    return "not a server"
