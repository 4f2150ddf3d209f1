"""Test helpers for MongoDB: a raw client and clean-up of a test's documents."""

from __future__ import annotations

import re
from typing import Any

from pymongo import AsyncMongoClient

from machinery_aio.drivers.mongo.backend import GROUPS, TASKS


def raw_client(url: str) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(url, tz_aware=True)


async def delete_documents(url: str, unique: str, database: str | None = None) -> None:
    """Delete every task and group document whose UUID has ``unique`` in it."""
    client = raw_client(url)
    try:
        db = client[database] if database else client.get_default_database()
        for name in (TASKS, GROUPS):
            await db[name].delete_many({"_id": {"$regex": re.escape(unique)}})
    finally:
        await client.close()
