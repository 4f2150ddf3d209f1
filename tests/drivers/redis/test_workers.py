"""Worker heartbeats in Redis: one hash whose readers delete the expired fields."""

from __future__ import annotations

import time

from machinery_aio import Config
from machinery_aio.drivers.redis.backend import RedisBackend
from machinery_aio.drivers.redis.workers import WORKERS_KEY
from tests.conftest import require_server

REDIS_URL = "redis://127.0.0.1:6379/3"


async def test_a_reader_deletes_expired_fields_and_foreign_ones(unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    backend = RedisBackend(Config(result_backend=REDIS_URL), REDIS_URL)
    await backend.connect()
    try:
        await backend.record_worker(f"{unique}-old", b"{}", time.time() - 1)
        await backend.client.hset(WORKERS_KEY, f"{unique}-foreign", b"not ours")
        await backend.record_worker(f"{unique}-live", b"{}", time.time() + 60)
        await backend.list_workers()
        fields = set(await backend.client.hkeys(WORKERS_KEY))
        assert f"{unique}-live".encode() in fields
        assert not {f"{unique}-old".encode(), f"{unique}-foreign".encode()} & fields
        assert 0 < await backend.client.ttl(WORKERS_KEY) <= 3600  # the hash goes when nobody writes
    finally:
        await backend.remove_worker(f"{unique}-live")
        await backend.close()
