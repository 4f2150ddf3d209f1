"""Fixtures for the RabbitMQ broker and AMQP result backend tests.

Every test gets its own exchange and queue names; whatever it declared is
deleted afterwards. Servers built with ``amqp_server`` record the task and
group UUIDs they publish, so their result queues are deleted too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import aio_pika
import pytest

from machinery_aio import Config, Server, Signature
from machinery_aio.config import AMQPConfig
from machinery_aio.drivers.amqp.layout import DEAD_LETTER_EXCHANGE
from tests.conftest import IN_CI, require_server

RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_BACKEND_URL = "redis://127.0.0.1:6379/4"


def require_redis_backend() -> None:
    """The Redis result backend is written on another branch: skip until it is merged (fail under CI)."""
    if importlib.util.find_spec("machinery_aio.drivers.redis.backend") is None:
        message = (
            "machinery_aio.drivers.redis.backend is not in this tree yet; the RabbitMQ + Redis "
            "backend tests run once it is merged"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    require_server("127.0.0.1", 6379, "Redis")


@dataclass
class Cleanup:
    """Names a test declared on RabbitMQ, deleted when it ends."""

    vhost_url: str = AMQP_URL
    queues: set[str] = field(default_factory=set)
    exchanges: set[str] = field(default_factory=set)

    def signature(self, sig: Signature) -> None:
        self.queues.add(sig.uuid)
        for callback in [*(sig.on_success or ()), *(sig.on_error or ())]:
            self.signature(callback)
        if sig.chord_callback is not None:
            self.signature(sig.chord_callback)
        if sig.group_uuid:
            g = sig.group_uuid
            self.queues.update({g, f"{g}_meta", f"{g}_chord_lock", f"{g}_chord_triggered"})

    def config(self, config: Config) -> None:
        self.exchanges.add(config.amqp.exchange)
        queue = config.default_queue
        self.queues.update({queue, f"{queue}.dead"})
        if config.amqp.delayed_queue:
            self.queues.add(config.amqp.delayed_queue)

    async def run(self) -> None:
        connection = await aio_pika.connect(self.vhost_url)
        try:
            for name in self.queues:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
            for name in self.exchanges:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
            # The shared dead-letter exchange goes once no test has a queue bound to it.
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(DEAD_LETTER_EXCHANGE, if_unused=True)
        finally:
            await connection.close()


async def purge_recorded(server: Server, cleanup: Cleanup) -> None:
    """Delete the result records of every task and group the test published (any backend)."""
    for name in cleanup.queues:
        if name.startswith(("task_", "chord_")):
            await server.backend.purge_state(name)
        elif name.startswith("group_") and not name.endswith(("_meta", "_lock", "_triggered")):
            await server.backend.purge_group_meta(name)


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
