"""What every worker registry (a broker or backend that keeps worker heartbeats) promises;
run for brokers by test_registry_broker.py and for backends by test_registry_backend.py."""

from __future__ import annotations

import asyncio
import json
import time

from machinery_aio.drivers.registry import WorkerRegistry


def record(name: str, **fields: object) -> bytes:
    return json.dumps({"name": name, **fields}).encode()


def named(records: list[bytes], prefix: str) -> list[dict[str, object]]:
    found = []
    for data in records:
        try:
            item = json.loads(data)
        except ValueError:
            continue
        if isinstance(item, dict) and str(item.get("name", "")).startswith(prefix):
            found.append(item)
    return sorted(found, key=lambda item: str(item["name"]))


async def live_records_are_listed_replaced_and_removed(registry: WorkerRegistry, unique: str) -> None:
    later = time.time() + 60
    await registry.record_worker(f"{unique}-a", record(f"{unique}-a", beat=1), later)
    await registry.record_worker(f"{unique}-b", record(f"{unique}-b", beat=1), later)
    await registry.record_worker(f"{unique}-a", record(f"{unique}-a", beat=2), later)  # replaces
    assert named(await registry.list_workers(), unique) == [
        {"name": f"{unique}-a", "beat": 2},
        {"name": f"{unique}-b", "beat": 1},
    ]
    await registry.remove_worker(f"{unique}-a")
    await registry.remove_worker(f"{unique}-never-there")  # no error
    assert named(await registry.list_workers(), unique) == [{"name": f"{unique}-b", "beat": 1}]
    await registry.remove_worker(f"{unique}-b")
    assert named(await registry.list_workers(), unique) == []


async def expired_records_are_not_listed(registry: WorkerRegistry, unique: str) -> None:
    await registry.record_worker(f"{unique}-gone", record(f"{unique}-gone"), time.time() - 1)
    await registry.record_worker(f"{unique}-soon", record(f"{unique}-soon"), time.time() + 0.3)
    assert named(await registry.list_workers(), unique) == [{"name": f"{unique}-soon"}]
    deadline = time.monotonic() + 30
    while named(await registry.list_workers(), unique):
        assert time.monotonic() < deadline, "an expired record is still listed"
        await asyncio.sleep(0.1)
