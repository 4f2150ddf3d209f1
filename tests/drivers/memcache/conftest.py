"""Fixtures for the Memcache tests: memcached on 11211, a raw client, the test's keys deleted
afterwards (tests name them ``task_<unique>_...``, ``group_<unique>_...``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiomcache
import pytest

from machinery_aio import Config
from machinery_aio.drivers.memcache.backend import MemcacheBackend
from tests.conftest import require_server
from tests.support.memcache import delete_keys, raw_client

URL = "memcache://127.0.0.1:11211"


@pytest.fixture
def used() -> set[str]:
    """Keys a test used: deleted afterwards."""
    return set()


@pytest.fixture
async def raw(used: set[str]) -> AsyncIterator[aiomcache.Client]:
    require_server("127.0.0.1", 11211, "memcached")
    client = raw_client(URL)
    yield client
    await client.close()
    await delete_keys(URL, used)


@pytest.fixture
async def backend(raw: aiomcache.Client) -> AsyncIterator[MemcacheBackend]:
    made = MemcacheBackend(Config(result_backend=URL))
    await made.connect()
    yield made
    await made.close()
