"""The drivers the contract suite runs against.

:data:`DRIVERS` lists one :class:`Driver` per technology set-up. Every test in
``test_broker.py``, ``test_backend.py`` and ``test_lock.py`` runs against each
driver whose technology has that role (see ``TECHNOLOGIES`` in
``machinery_aio/drivers/__init__.py``), except the tests marked
``@pytest.mark.needs("capability")`` whose capability the driver's class lacks:
those cases are not generated for it (no skips). A new driver joins the suite
with one more ``Driver(...)`` in :data:`DRIVERS`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from machinery_aio import Arg, Config, Signature
from machinery_aio.drivers import create_backend, create_broker, create_lock, technology_of
from machinery_aio.drivers.backend import ResultBackend
from machinery_aio.drivers.broker import Broker, Consumer
from machinery_aio.drivers.lock import Lock
from machinery_aio.drivers.redis.connection import create_redis
from machinery_aio.drivers.registry import WorkerRegistry
from tests.conftest import require_server
from tests.support.aws import DYNAMODB_URL, MOTO, SQS_URL, aws_cleanup, aws_settings, use_moto
from tests.support.pubsub import (
    PUBSUB_SERVER,
    pubsub_available,
    pubsub_cleanup,
    pubsub_settings,
    pubsub_url,
)
from tests.support.rabbitmq import AMQP_URL, Cleanup

ROLES = ("broker", "backend", "lock")


@dataclass(frozen=True)
class Driver:
    """One driver set-up: its URL, the servers it needs, its settings, its cleanup."""

    id: str
    url: str
    """The URL of every role; ``{unique}`` is replaced by the test's unique name."""
    backend_url: str = ""
    """The result backend's URL when it is not ``url`` (SQS with DynamoDB results)."""
    servers: tuple[tuple[str, int, str], ...] = ()
    """(host, port, what) of each server; unreachable ones skip the test, or fail it under CI."""
    configure: Callable[[Config, str], None] | None = None
    """Settings of the technology for one test (its own key names, short timeouts)."""
    cleanup: Callable[[Config, str, set[str]], Awaitable[None]] | None = None
    """Delete what a test left on the server: called with the config, the unique name, and
    the task and group UUIDs and queue names the test used."""

    def config(self, unique: str) -> Config:
        url = self.url.replace("{unique}", unique)
        config = Config(
            broker=url,
            result_backend=self.backend_url.replace("{unique}", unique) or url,
            lock=url,
            default_queue=f"{unique}_q",
            results_expire_in=600,
        )
        if self.configure is not None:
            self.configure(config, unique)
        return config

    def driver_class(self, role: str) -> Any:
        tech = technology_of(self.backend_url if role == "backend" and self.backend_url else self.url)
        name = tech.cls_name(role) if tech is not None else None  # type: ignore[arg-type]
        if tech is None or name is None:
            return None
        return getattr(importlib.import_module(f"machinery_aio.drivers.{tech.name}.{role}"), name)

    def capabilities(self, role: str) -> Any:
        return self.driver_class(role).capabilities

    def require_servers(self) -> None:
        for host, port, what in self.servers:
            require_server(host, port, what)


# -- Redis -------------------------------------------------------------------------------


def redis_settings(config: Config, unique: str) -> None:
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    config.redis.consumer_timeout = 3.0  # a killed consumer's messages return after 3 s


async def redis_cleanup(config: Config, unique: str, names: set[str]) -> None:
    """Every key of the test has its unique name in it (queues, UUIDs, the delayed set)."""
    client = create_redis(config.broker, Config())
    try:
        keys = [key async for key in client.scan_iter(match=f"*{unique}*", count=1000)]
        for key in keys:
            await client.delete(key)
    finally:
        await client.aclose()


# -- RabbitMQ ---------------------------------------------------------------------------


def amqp_settings(config: Config, unique: str) -> None:
    config.amqp.exchange = f"{unique}_exchange"


async def amqp_cleanup(config: Config, unique: str, names: set[str]) -> None:
    cleanup = Cleanup()
    cleanup.config(config)
    for name in names:
        if name.startswith(("task_", "group_", "chord_")):
            cleanup.uuid(name)
        else:
            cleanup.queue(name)
    await cleanup.run()


# -- Memcache and MongoDB ------------------------------------------------------------------

MEMCACHE_URL = "memcache://127.0.0.1:11211"
MONGO_URL = "mongodb://127.0.0.1:27017/machinery_aio_tests"


async def memcache_cleanup(config: Config, unique: str, names: set[str]) -> None:
    from tests.support.memcache import delete_keys

    await delete_keys(MEMCACHE_URL, names)


async def mongo_cleanup(config: Config, unique: str, names: set[str]) -> None:
    from tests.support.mongo import delete_documents

    await delete_documents(MONGO_URL, unique)


REDIS = ("127.0.0.1", 6379, "Redis")
CLUSTER = ("127.0.0.1", 7000, "the Redis Cluster")
RABBITMQ = ("127.0.0.1", 5672, "RabbitMQ")
MEMCACHED = ("127.0.0.1", 11211, "memcached")
MONGO = ("127.0.0.1", 27017, "the MongoDB-protocol server (nx-27017)")

DRIVERS: list[Driver] = [
    Driver("memory", "memory://{unique}"),
    Driver(
        "redis",
        "redis://127.0.0.1:6379/1",
        servers=(REDIS,),
        configure=redis_settings,
        cleanup=redis_cleanup,
    ),
    Driver(
        "redis-cluster",
        "redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
        servers=(CLUSTER,),
        configure=redis_settings,
        cleanup=redis_cleanup,
    ),
    Driver("rabbitmq", AMQP_URL, servers=(RABBITMQ,), configure=amqp_settings, cleanup=amqp_cleanup),
    # -- Memcache and MongoDB (result backends only) --
    Driver("memcache", MEMCACHE_URL, servers=(MEMCACHED,), cleanup=memcache_cleanup),
    Driver("mongo", MONGO_URL, servers=(MONGO,), cleanup=mongo_cleanup),
    # eager:// runs tasks as they are published: its backend runs the backend contract; its
    # broker (no queues, capabilities.consumes False) is tested in tests/drivers/eager/.
    Driver("eager", "eager://{unique}"),
]
"""Every driver the contract suite runs against: add one line for a new driver."""

# -- Google Cloud Pub/Sub (the emulator; left out where it is not installed) -------------------

if pubsub_available():
    DRIVERS.append(
        Driver(
            "gcppubsub",
            pubsub_url("{unique}"),
            servers=(PUBSUB_SERVER,),
            configure=pubsub_settings,
            cleanup=pubsub_cleanup,
        )
    )
# -- AWS (moto's server) -----------------------------------------------------------------------

use_moto()


# The contract tests each use one role, so SQS with Redis results (or Redis with DynamoDB
# results) would run the same cases again; tests/drivers/aws/test_mixed.py runs those pairs
# end to end instead.
DRIVERS += [
    Driver(
        "sqs-dynamodb",
        SQS_URL,
        backend_url=DYNAMODB_URL,
        servers=(MOTO,),
        configure=aws_settings,
        cleanup=aws_cleanup,
    ),
]


# -- parametrization -----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "contract(role): the role (broker, backend, lock) a contract module tests"
    )
    config.addinivalue_line(
        "markers", "needs(*capabilities): generate the case only for drivers that have these capabilities"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "driver" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("contract")
    assert marker is not None, "a contract test module needs pytestmark = pytest.mark.contract(role)"
    role = marker.args[0]
    assert role in ROLES, role
    needs = [name for m in metafunc.definition.iter_markers("needs") for name in m.args]
    drivers = [
        d for d in DRIVERS if d.driver_class(role) is not None and all(_has(d, role, n) for n in needs)
    ]
    metafunc.parametrize("driver", drivers, ids=[d.id for d in drivers])


def _has(driver: Driver, role: str, need: str) -> bool:
    """A capability of the driver's class; ``worker_registry``: it keeps worker heartbeats."""
    if need == "worker_registry":
        return issubclass(driver.driver_class(role), WorkerRegistry)
    return bool(getattr(driver.capabilities(role), need))


# -- what a test builds ----------------------------------------------------------------------


class Kit:
    """Builds a test's drivers from its config; closes them and cleans up afterwards."""

    def __init__(self, driver: Driver, unique: str) -> None:
        self.driver = driver
        self.unique = unique
        self.config = driver.config(unique)
        self.queue = self.config.default_queue
        self.names: set[str] = set()
        self._consumers: list[Consumer] = []
        self._closing: list[Broker | ResultBackend | Lock] = []

    # -- names ---------------------------------------------------------------------------

    def uuid(self, kind: str, n: object) -> str:
        """``<kind>_<unique>_<n>``, remembered for the cleanup."""
        name = f"{kind}_{self.unique}_{n}"
        self.names.add(name)
        return name

    def other_queue(self, name: str) -> str:
        queue = f"{self.unique}_{name}"
        self.names.add(queue)
        return queue

    def sig(self, n: int, **fields: Any) -> Signature:
        """``add(n)`` with a UUID of this test."""
        return Signature(uuid=self.uuid("task", n), name="add", args=[Arg.of(n)], **fields)

    # -- drivers ---------------------------------------------------------------------------

    def _copy(self, **changes: Any) -> Config:
        """A config of its own (on Redis, a config object has its own connections)."""
        config = self.config.model_copy(deep=True)
        for key, value in changes.items():
            setattr(config, key, value)
        return config

    async def broker(self) -> Broker:
        broker = create_broker(self._copy())
        self._closing.append(broker)
        await broker.connect()
        return broker

    def consumer(self, broker: Broker, prefetch: int = 10, queue: str | None = None) -> Consumer:
        consumer = broker.consumer(queue or self.queue, prefetch=prefetch, tag="contract")
        self._consumers.append(consumer)
        return consumer

    async def backend(self, **changes: Any) -> ResultBackend:
        backend = create_backend(self._copy(**changes))
        self._closing.append(backend)
        await backend.connect()
        return backend

    async def lock(self) -> Lock:
        lock = create_lock(self._copy())
        self._closing.append(lock)
        await lock.connect()
        return lock

    async def close(self) -> None:
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.close()
        for made in reversed(self._closing):
            with contextlib.suppress(Exception):
                await made.close()
        if self.driver.cleanup is not None:
            await self.driver.cleanup(self.config, self.unique, self.names)


@pytest.fixture
async def kit(driver: Driver, unique: str) -> AsyncIterator[Kit]:
    driver.require_servers()
    made = Kit(driver, unique)
    yield made
    await made.close()
