"""Worker heartbeats: a running worker is listed with what it says about itself, it is gone
once it stops, an expired record is not listed, and the registry is the shared one."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from machinery_aio import Config, Server
from machinery_aio.drivers.registry import WorkerRegistry
from machinery_aio.heartbeat import Heartbeat, WorkerInfo, live_workers, registry_of
from tests.conftest import require_server
from tests.support.redis import eventually

REDIS_URL = "redis://127.0.0.1:6379/3"


async def test_a_running_worker_is_listed_and_gone_once_it_stops(memory_server: Server) -> None:
    @memory_server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    registry = registry_of(memory_server.backend, memory_server.broker)
    assert registry is memory_server.backend
    worker = memory_server.new_worker("listed", 3, heartbeat_interval=0.05)
    async with worker:
        assert await (await add.delay(1, 2)).get(timeout=10) == 3
        listed = await eventually(lambda: _named(registry, "listed", processed=1))
        assert (listed.pid, listed.queues, listed.concurrency) == (os.getpid(), [worker.queue], 3)
        assert (listed.failed, listed.running) == (0, 0)
        assert listed.started_at <= listed.seen_at
        assert listed.version == __import__("machinery_aio").__version__
    assert await live_workers(registry) == []


async def _named(registry: WorkerRegistry, name: str, processed: int) -> WorkerInfo | None:
    for info in await live_workers(registry):
        if info.name == name and info.processed >= processed:
            return info
    return None


async def test_a_worker_that_stops_beating_drops_out_when_its_record_expires(memory_server: Server) -> None:
    registry = registry_of(memory_server.backend)
    assert registry is not None
    worker = memory_server.new_worker("silent", 1, heartbeat_interval=None)
    assert worker.heartbeat is None
    beat = Heartbeat(worker, registry, interval=0.05)
    await beat.beat()  # one heartbeat, then silence (as a worker killed with SIGKILL)
    assert [w.name for w in await live_workers(registry)] == ["silent"]
    await asyncio.sleep(beat.interval * 4 + 0.05)
    assert await live_workers(registry) == []


async def test_records_that_are_not_worker_infos_are_skipped(memory_server: Server) -> None:
    registry = registry_of(memory_server.backend)
    assert registry is not None
    await registry.record_worker("junk", b"not json", time.time() + 60)
    await registry.record_worker("half", b'{"name": "x"}', time.time() + 60)
    assert await live_workers(registry) == []


async def test_a_worker_info_goes_through_redis_as_it_was_written(unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    async with Server(Config(broker=REDIS_URL, result_backend=REDIS_URL, default_queue=unique)) as server:
        await server.connect()
        registry = registry_of(server.backend, server.broker)
        assert registry is server.backend
        beat = Heartbeat(server.new_worker(f"{unique}-w", 2, heartbeat_interval=None), registry, interval=5)
        written = beat.info()
        await registry.record_worker(written.key, written.model_dump_json().encode(), time.time() + 60)
        try:
            assert [w for w in await live_workers(registry) if w.name == f"{unique}-w"] == [written]
        finally:
            await registry.remove_worker(written.key)


def test_the_shared_registry_wins_over_the_in_process_one() -> None:
    from machinery_aio.drivers.memory.backend import MemoryBackend
    from machinery_aio.drivers.null.backend import NullBackend
    from machinery_aio.drivers.redis.broker import RedisBroker

    config = Config(broker=REDIS_URL)
    memory, redis = MemoryBackend(config, "memory://"), RedisBroker(config, REDIS_URL)
    assert registry_of(memory, redis) is redis
    assert registry_of(NullBackend(config, "null://"), redis) is redis
    assert registry_of(memory) is memory
    assert registry_of(NullBackend(config, "null://")) is None


def test_a_heartbeat_interval_must_be_positive(memory_server: Server) -> None:
    registry = registry_of(memory_server.backend)
    assert registry is not None
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(memory_server.new_worker("w", 1), registry, interval=0)
