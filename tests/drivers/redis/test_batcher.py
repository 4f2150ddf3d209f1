"""The command batcher against a real Redis: pipelines, scripts Redis forgot, shared handles."""

from __future__ import annotations

import asyncio
from typing import Any

from machinery_aio import Server, State, TaskState
from machinery_aio.drivers.redis.batcher import Command, CommandBatcher, LuaScript
from machinery_aio.drivers.redis.connection import RedisClient, create_redis
from tests.drivers.redis.conftest import make_config

ECHO = LuaScript("return {KEYS[1], ARGV[1]}")


async def test_scripts_redis_forgot_are_sent_again_and_every_reply_goes_to_its_caller(
    standalone_url: str, unique: str
) -> None:
    config = make_config(standalone_url, unique)
    client = create_redis(standalone_url, config)
    batcher = CommandBatcher(client)
    try:
        await client.execute_command("SCRIPT", "FLUSH")  # as after a restart
        # queued in one event-loop iteration: one pipeline, scripts between plain commands
        futures = [
            batcher.submit(Command.lua(ECHO, [f"{unique}:k{i}"], [i]))
            if i % 2
            else batcher.submit(Command.of("SET", f"{unique}:k{i}", i))
            for i in range(10)
        ]
        replies = await asyncio.gather(*futures)
        for i, reply in enumerate(replies):
            assert reply == ([f"{unique}:k{i}".encode(), str(i).encode()] if i % 2 else b"OK")
        assert await batcher.execute_all(
            [Command.of("GET", f"{unique}:k0"), Command.lua(ECHO, ["a"], ["b"])]
        ) == [b"0", [b"a", b"b"]]
    finally:
        await client.delete(*[f"{unique}:k{i}" for i in range(10)])
        await batcher.close()
        await client.aclose()


async def test_a_servers_broker_and_backend_share_one_redis_handle(
    redis_url: str, unique: str, raw: RedisClient
) -> None:
    config = make_config(redis_url, unique)
    server = Server(config)
    broker: Any = server.broker
    backend: Any = server.backend
    assert broker._redis is backend._redis
    other: Any = Server(make_config(redis_url, unique)).backend  # another config: its own
    assert other._redis is not backend._redis
    try:
        await server.connect()
        await broker.close()  # the backend still uses the connections
        await backend.set_state(TaskState(task_uuid=f"task_{unique}", state=State.FAILURE, error="x"))
        state = await backend.get_state(f"task_{unique}")
        assert state is not None
        assert state.error == "x"
    finally:
        await server.close()
        await other.close()
