"""Worker heartbeats in Redis: one HASH, field = worker key, value = ``<expires at> <json>``.

One key, so it works the same on a cluster; readers delete expired fields, and the key
itself expires when no worker has written for a while.
"""

from __future__ import annotations

import time

from .connection import RedisClient

__all__ = ["WORKERS_KEY", "list_workers", "record_worker", "remove_worker"]

WORKERS_KEY = "machinery_workers"
KEY_TTL = 3600
"""Seconds the hash outlives its last write."""


async def record_worker(client: RedisClient, key: str, data: bytes, expires_at: float) -> None:
    await client.hset(WORKERS_KEY, key, b"%.3f %s" % (expires_at, data))
    await client.expire(WORKERS_KEY, KEY_TTL)


async def remove_worker(client: RedisClient, key: str) -> None:
    await client.hdel(WORKERS_KEY, key)


async def list_workers(client: RedisClient) -> list[bytes]:
    now = time.time()
    records: dict[bytes, bytes] = await client.hgetall(WORKERS_KEY)  # type: ignore[assignment]
    live: list[bytes] = []
    expired: list[bytes] = []
    for key, value in records.items():
        stamp, _, data = value.partition(b" ")
        try:
            alive = float(stamp) > now
        except ValueError:
            alive = False  # not a record of ours: clear it
        (live if alive else expired).append(data if alive else key)
    if expired:
        await client.hdel(WORKERS_KEY, *expired)
    return live
