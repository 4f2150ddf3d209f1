"""Helpers for the engine's tests (publisher, runner, worker, middleware): a memory:// server
whose broker and backend record what was asked of them, and small waiting and building helpers.

A test module takes the fixtures ``config`` and ``server`` with
``from tests.support.engine import config_fixture, server_fixture  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from machinery_aio import Arg, Config, Server, Signature, State
from tests.support.recording import RecordingBackend, RecordingBroker

P, R, S = State.PENDING, State.RECEIVED, State.STARTED


@pytest.fixture(name="config")
def config_fixture(unique: str) -> Config:
    """A memory:// configuration of the test's own (queues, states and locks shared by nothing)."""
    url = f"memory://{unique}"
    return Config(broker=url, result_backend=url, lock=url, default_queue=f"{unique}_q")


@pytest.fixture(name="server")
async def server_fixture(config: Config) -> AsyncIterator[Server]:
    """A Server on a :class:`RecordingBroker` and a :class:`RecordingBackend`."""
    srv = Server(config, broker=RecordingBroker(config), backend=RecordingBackend(config))
    yield srv
    await srv.close()


def backend_of(server: Server) -> RecordingBackend:
    assert isinstance(server.backend, RecordingBackend)
    return server.backend


def broker_of(server: Server) -> RecordingBroker:
    assert isinstance(server.broker, RecordingBroker)
    return server.broker


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until ``predicate`` holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)


def ints(*values: int) -> list[Arg]:
    return [Arg(type="int64", value=v) for v in values]


def task(name: str, *values: int, **fields: Any) -> Signature:
    """A signature of ``name`` with int64 arguments."""
    return Signature(name=name, args=ints(*values), **fields)


async def in_state(getting: Awaitable[Any], state: State) -> bool:
    return (await getting).state is state


async def pending_count(server: Server) -> int:
    return await server.broker.count_pending()


async def push_raw(server: Server, body: bytes, queue: str | None = None) -> None:
    """Put raw bytes on the server's memory:// queue, as a foreign (or Go) producer would."""
    broker = server.broker
    assert isinstance(broker, RecordingBroker)
    await broker.push_raw(queue or server.config.default_queue, body)


def register_math(server: Server, calls: dict[str, list[list[Any]]]) -> None:
    """``add``, ``multiply``, ``collect`` (returns its arguments) and ``fail`` (raises
    ValueError with its argument); every call's arguments are noted in ``calls``."""

    async def add(*values: int) -> int:
        calls.setdefault("add", []).append(list(values))
        return sum(values)

    async def multiply(*values: int) -> int:
        calls.setdefault("multiply", []).append(list(values))
        product = 1
        for v in values:
            product *= v
        return product

    async def collect(*values: Any) -> list[Any]:
        calls.setdefault("collect", []).append(list(values))
        return list(values)

    async def fail(message: str) -> None:
        raise ValueError(message)

    server.register_tasks({"add": add, "multiply": multiply, "collect": collect, "fail": fail})


def free_port() -> int:
    """A local TCP port where nothing listens (as the OS hands it out now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
