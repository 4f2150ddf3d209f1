"""Fixtures for the Redis tests: the real Redis on 6379 (db 1) and the Redis Cluster on
7000-7002. Every test uses keys that contain its ``unique`` name and deletes them after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from machinery_aio import Config, Server
from machinery_aio.drivers.redis.connection import RedisClient, create_redis
from tests.conftest import require_server

STANDALONE = "redis://127.0.0.1:6379/1"
CLUSTER = "redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"


def need(url: str) -> str:
    if url == CLUSTER:
        require_server("127.0.0.1", 7000, "the Redis Cluster")
    else:
        require_server("127.0.0.1", 6379, "Redis")
    return url


@pytest.fixture(params=[STANDALONE, CLUSTER], ids=["standalone", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs on a single Redis and on the cluster."""
    return need(request.param)


@pytest.fixture
def standalone_url() -> str:
    return need(STANDALONE)


async def delete_matching(client: RedisClient, pattern: str) -> int:
    keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
    for key in keys:
        await client.delete(key)
    return len(keys)


@pytest.fixture
async def raw(redis_url: str, unique: str) -> AsyncIterator[RedisClient]:
    """A plain client on the same Redis, for looking at keys; cleans up after the test."""
    client = create_redis(redis_url, Config())
    yield client
    await delete_matching(client, f"*{unique}*")
    await client.aclose()


def make_config(url: str, unique: str, **redis: object) -> Config:
    config = Config(broker=url, result_backend=url, default_queue=f"{unique}_q", results_expire_in=600)
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    for key, value in redis.items():
        setattr(config.redis, key, value)
    return config


@pytest.fixture
def redis_config(redis_url: str, unique: str) -> Config:
    return make_config(redis_url, unique)


@pytest.fixture
async def redis_server(redis_config: Config, raw: RedisClient) -> AsyncIterator[Server]:
    server = Server(redis_config)
    yield server
    await server.close()


@pytest.fixture
def ids(unique: str) -> Callable[..., str]:
    """``ids("x")`` -> ``task_<unique>_x``: task UUIDs the cleanup finds."""

    def make(name: object, kind: str = "task") -> str:
        return f"{kind}_{unique}_{name}"

    return make
