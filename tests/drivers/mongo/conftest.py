"""Fixtures for the MongoDB tests: the MongoDB-protocol server on 27017 (nx-27017 here), a
raw database handle, every document whose UUID holds the test's ``unique`` name deleted
afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from machinery_aio import Config
from machinery_aio.drivers.mongo.backend import MongoBackend
from tests.conftest import require_server
from tests.support.mongo import delete_documents, raw_client

URL = "mongodb://127.0.0.1:27017/machinery_aio_tests"


@pytest.fixture
async def db(unique: str) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    require_server("127.0.0.1", 27017, "the MongoDB-protocol server (nx-27017)")
    client = raw_client(URL)
    yield client.get_default_database()
    await client.close()
    await delete_documents(URL, unique)


@pytest.fixture
async def backend(db: AsyncDatabase[dict[str, Any]]) -> AsyncIterator[MongoBackend]:
    made = MongoBackend(Config(result_backend=URL))
    await made.connect()
    yield made
    await made.close()
