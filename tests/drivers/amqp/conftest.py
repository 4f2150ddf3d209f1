"""Fixtures for the RabbitMQ broker and AMQP result backend tests.

Every test gets its own exchange and queue names; whatever it declared is
deleted afterwards. Servers built with ``amqp_server`` record the task and
group UUIDs they publish, so their result queues are deleted too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from machinery_aio import Config, Server
from machinery_aio.config import AMQPConfig
from machinery_aio.drivers.redis.backend import RedisBackend, chord_owner_key
from tests.conftest import IN_CI, require_server
from tests.support.rabbitmq import AMQP_URL, Cleanup

RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
REDIS_BACKEND_URL = "redis://127.0.0.1:6379/4"


def require_redis_backend() -> None:
    require_server("127.0.0.1", 6379, "Redis")


async def purge_recorded(server: Server, cleanup: Cleanup) -> None:
    """Delete the Redis result records of every task and group the test published."""
    backend = server.backend
    assert isinstance(backend, RedisBackend)
    names = [n for n in cleanup.queues if n.startswith(("task_", "chord_", "group_")) and "." not in n]
    names += [chord_owner_key(n) for n in names if n.startswith("group_")]
    if names:
        await backend.client.delete(*names)


def amqp_test_config(unique: str, url: str = AMQP_URL, backend: str | None = None, **amqp: object) -> Config:
    return Config(
        broker=url,
        result_backend=backend or url,
        default_queue=f"{unique}_tasks",
        results_expire_in=300,
        amqp=AMQPConfig(exchange=f"{unique}_exchange", **amqp),
    )


@pytest.fixture
def rabbitmq() -> None:
    require_server(RABBIT_HOST, RABBIT_PORT, "RabbitMQ")


@pytest.fixture
async def cleanup(rabbitmq: None) -> AsyncIterator[Cleanup]:
    names = Cleanup()
    yield names
    await names.run()


@pytest.fixture
def amqp_config(unique: str, cleanup: Cleanup) -> Config:
    config = amqp_test_config(unique)
    cleanup.config(config)
    return config


@pytest.fixture
async def amqp_server(cleanup: Cleanup) -> AsyncIterator[Callable[[Config], Server]]:
    """Build servers that record what they publish for cleanup and are closed afterwards."""
    made: list[Server] = []

    def factory(config: Config) -> Server:
        server = Server(config)
        cleanup.config(config)
        server.set_pre_publish_handler(cleanup.signature)
        made.append(server)
        return server

    yield factory
    for server in made:
        await server.close()


def rabbitmqctl_or_skip() -> str:
    path = shutil.which("rabbitmqctl") or (
        "/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl") else None
    )
    if path is None or (os.geteuid() != 0 and not os.access(path, os.X_OK)):
        message = "rabbitmqctl is not available to this user"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def vhost(unique: str, rabbitmq: None) -> Iterator[str]:
    """A RabbitMQ vhost of the test's own (guest has all permissions), deleted afterwards."""
    ctl = rabbitmqctl_or_skip()
    name = f"machinery_aio_{unique}"
    subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True
        )
        yield name
    finally:
        subprocess.run([ctl, "delete_vhost", name], check=False, capture_output=True)


def close_vhost_connections(vhost: str) -> None:
    """Force-close every connection to ``vhost`` (and only those), as an operator would."""
    ctl = rabbitmqctl_or_skip()
    subprocess.run(
        [
            ctl,
            "close_all_connections",
            "--vhost",
            vhost,
            "--limit",
            "1000",
            "machinery-aio test: connection loss",
        ],
        check=True,
        capture_output=True,
    )
