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
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CLUSTER_URL = "redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"


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


REGISTRIES = {
    "redis backend": (REDIS_URL, REDIS_URL, "backend", 6379),
    "redis broker": (REDIS_URL, "null://", "broker", 6379),
    "amqp broker": (AMQP_URL, "null://", "broker", 5672),
    "redis cluster backend": (CLUSTER_URL, CLUSTER_URL, "backend", 7000),
}


@pytest.mark.parametrize("kind", list(REGISTRIES))
async def test_a_registry_lists_live_records_and_forgets_removed_and_expired_ones(
    kind: str, unique: str
) -> None:
    broker, backend, where, port = REGISTRIES[kind]
    require_server("127.0.0.1", port, kind.rpartition(" ")[0])
    async with Server(Config(broker=broker, result_backend=backend, default_queue=unique)) as server:
        await server.connect()
        registry = server.backend if where == "backend" else server.broker
        assert isinstance(registry, WorkerRegistry)
        assert registry_of(server.backend, server.broker) is registry
        worker = server.new_worker(f"{unique}-w", 2, heartbeat_interval=None)
        beat = Heartbeat(worker, registry, interval=5)
        await beat.beat()
        await beat.beat()  # a second beat replaces the first
        await registry.record_worker(f"{unique}-old", b"{}", time.time() - 1)
        await registry.record_worker(f"{unique}-junk", b"junk", time.time() + 60)

        async def mine() -> list[WorkerInfo]:
            return [w for w in await live_workers(registry) if w.name.startswith(unique)]

        assert [(w.name, w.pid, w.queues) for w in await mine()] == [(f"{unique}-w", os.getpid(), [unique])]
        await registry.remove_worker(beat.info().key)
        await registry.remove_worker(f"{unique}-junk")
        assert await mine() == []
        assert not [d for d in await registry.list_workers() if unique.encode() in d]


async def test_redis_readers_delete_expired_records(unique: str) -> None:
    require_server("127.0.0.1", 6379, "Redis")
    async with Server(Config(broker=REDIS_URL, result_backend=REDIS_URL, default_queue=unique)) as server:
        await server.connect()
        registry = server.backend
        assert isinstance(registry, WorkerRegistry)
        await registry.record_worker(f"{unique}-old", b"{}", time.time() - 1)
        await live_workers(registry)
        client = server.backend.client  # type: ignore[attr-defined]
        assert f"{unique}-old".encode() not in await client.hkeys("machinery_workers")
