"""Workflows through a real worker on a given broker and result backend (used by the
Memcache and MongoDB driver tests, with the memory and the Redis broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from machinery_aio import Arg, Chain, Chord, Config, Group, Server, Signature, TaskFailedError
from machinery_aio.drivers.redis.connection import create_redis
from tests.conftest import require_server

REDIS_BROKER = "redis://127.0.0.1:6379/1"
BROKERS = ["memory", "redis"]


def broker_config(broker: str, backend_url: str, unique: str) -> Config:
    """A config with ``broker`` ("memory" or "redis") and the backend at ``backend_url``."""
    if broker == "redis":
        require_server("127.0.0.1", 6379, "Redis")
        config = Config(broker=REDIS_BROKER, result_backend=backend_url, default_queue=f"{unique}_q")
        config.redis.delayed_tasks_key = f"{unique}_delayed"
        return config
    return Config(broker=f"memory://{unique}", result_backend=backend_url, default_queue=f"{unique}_q")


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Server]:
    """A server with ``add`` and ``fail`` registered and a worker running."""
    server = Server(config)

    @server.task("add")
    async def add(*values: int) -> int:
        return sum(values)

    @server.task("fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    try:
        async with server.new_worker("wf", concurrency=8):
            yield server
    finally:
        await server.close()
        if config.broker.startswith("redis"):
            await delete_redis_keys(config.default_queue.removesuffix("_q"))


async def delete_redis_keys(unique: str) -> None:
    client = create_redis(REDIS_BROKER, Config())
    try:
        async for key in client.scan_iter(match=f"*{unique}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


def add(uuid: str, *values: int) -> Signature:
    return Signature(uuid=uuid, name="add", args=[Arg.of(v) for v in values])


async def check_workflows(server: Server, unique: str) -> list[str]:
    """A task, a failing task, a chain, a group and a chord; returns the UUIDs used."""
    assert await (await server.send_task(add(f"task_{unique}_1", 1, 2))).get(timeout=30) == 3
    failing = Signature(uuid=f"task_{unique}_2", name="fail", args=[Arg.of("no")])
    with pytest.raises(TaskFailedError, match="no"):
        await (await server.send_task(failing)).get(timeout=30)
    chain = Chain(add(f"task_{unique}_3", 1, 1), add(f"task_{unique}_4", 5), add(f"task_{unique}_5", 10))
    assert await (await server.send_chain(chain)).get(timeout=30) == 17
    members = [add(f"task_{unique}_g{i}", i, i) for i in range(5)]
    results = await server.send_group(Group(*members, group_uuid=f"group_{unique}_1"))
    assert [await r.get(timeout=30) for r in results] == [2 * i for i in range(5)]
    chord_members = [add(f"task_{unique}_c{i}", i) for i in range(10)]
    callback = add(f"chord_{unique}_1")
    chord = Chord(Group(*chord_members, group_uuid=f"group_{unique}_2"), callback)
    assert await (await server.send_chord(chord)).get(timeout=30) == sum(range(10))
    return [
        *(f"task_{unique}_{n}" for n in range(1, 6)),
        *(m.uuid for m in members + chord_members),
        f"group_{unique}_1",
        f"group_{unique}_2",
        f"chord_{unique}_1",
    ]
