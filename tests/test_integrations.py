"""FastAPI-style lifespan, aiohttp cleanup context, and the testing helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web

from machinery_aio import Server, testing
from machinery_aio.integrations.aiohttp import MACHINERY_KEY
from machinery_aio.integrations.aiohttp import setup as aiohttp_setup
from machinery_aio.integrations.fastapi import machinery_lifespan


def _server_with_add() -> tuple[Server, object]:
    server = testing.memory_server()

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    return server, add


async def test_lifespan_runs_embedded_worker_and_exposes_server() -> None:
    server, add = _server_with_add()
    app = SimpleNamespace(state=SimpleNamespace())
    async with machinery_lifespan(server, run_worker=True, concurrency=2)(app):
        assert app.state.machinery is server
        result = await add.delay(2, 3)  # type: ignore[attr-defined]
        assert await result.get(timeout=10) == 5


async def test_lifespan_without_worker_only_sends() -> None:
    server, add = _server_with_add()
    async with machinery_lifespan(server)(SimpleNamespace()):
        result = await add.delay(1, 1)  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            await result.get(timeout=0.2)
        assert (await result.get_state()).state == "PENDING"


async def test_aiohttp_setup_starts_and_stops_with_the_app() -> None:
    server, add = _server_with_add()
    app = web.Application()
    aiohttp_setup(app, server, run_worker=True, concurrency=2)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert app[MACHINERY_KEY] is server
        result = await add.delay(20, 22)  # type: ignore[attr-defined]
        assert await result.get(timeout=10) == 42
    finally:
        await runner.cleanup()


async def test_testing_helpers_wait_until_idle() -> None:
    server = testing.memory_server()
    done: list[int] = []

    @server.task("record")
    async def record(value: int) -> None:
        done.append(value)

    async with testing.running_worker(server, concurrency=4) as worker:
        for value in range(20):
            await record.delay(value)
        await testing.wait_idle(worker, timeout=10, settle=0.2)
    assert sorted(done) == list(range(20))


async def test_memory_servers_are_isolated() -> None:
    first, second = testing.memory_server(), testing.memory_server()
    assert first.config.broker != second.config.broker
