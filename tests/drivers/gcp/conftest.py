"""Fixtures for the Pub/Sub broker tests, on Google's emulator (``PUBSUB_EMULATOR_HOST``).

Every test has its own topics and subscriptions (named after its unique name),
deleted afterwards. Where the emulator is not installed the tests are left out
with that reason; where it is installed but not running they fail under CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from machinery_aio import Config, Server
from machinery_aio.config import GCPPubSubConfig
from machinery_aio.drivers.gcp.names import PubSubNames
from machinery_aio.drivers.gcp.resources import Clients
from tests.conftest import require_server
from tests.support.pubsub import PUBSUB_SERVER, pubsub_available, pubsub_cleanup, pubsub_url

REDIS_BACKEND_URL = "redis://127.0.0.1:6379/9"

needs_emulator = pytest.mark.skipif(
    not pubsub_available(),
    reason="the Pub/Sub emulator is not installed here (Debian package google-cloud-cli-pubsub-emulator)",
)


def pubsub_config(unique: str, backend: str = "memory://", **settings: object) -> Config:
    return Config(
        broker=pubsub_url(unique),
        result_backend=backend,
        default_queue=f"{unique}_q",
        results_expire_in=120,
        gcp_pubsub=GCPPubSubConfig(**{"ack_deadline": 10, **settings}),
    )


@pytest.fixture
async def emulator(unique: str) -> AsyncIterator[None]:
    """The emulator is reachable; the test's topics and subscriptions are deleted afterwards."""
    require_server(*PUBSUB_SERVER)
    yield
    await pubsub_cleanup(Config(), unique, set())


@pytest.fixture
async def raw(emulator: None) -> AsyncIterator[Clients]:
    """Google's clients, to publish and pull as Go (or anyone) would."""
    clients = Clients()
    yield clients
    await clients.close()


def names(config: Config) -> PubSubNames:
    return PubSubNames.from_url(config.broker, config.default_queue)


@pytest.fixture(params=["memory", "redis"])
async def server(request: pytest.FixtureRequest, unique: str, emulator: None) -> AsyncIterator[Server]:
    """A server on Pub/Sub with results in memory or in Redis, with add and multiply."""
    if request.param == "redis":
        require_server("127.0.0.1", 6379, "Redis")
        config = pubsub_config(unique, REDIS_BACKEND_URL)
    else:
        config = pubsub_config(unique)
    made = Server(config)

    @made.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    @made.task("multiply")
    async def multiply(*numbers: int) -> int:
        product = 1
        for n in numbers:
            product *= n
        return product

    yield made
    await made.close()
