"""What the revoke check costs a worker on Redis.

    python benchmarks/revoke_check.py [--url redis://127.0.0.1:6379/1] [--tasks 5000]
                                      [--concurrency 100] [--revoked 1000]

Drains no-op tasks three times with one in-process worker: without the check (the worker's
revocations switched off), with it while nothing is revoked, and with it while
``--revoked`` other tasks are revoked. Prints tasks/s and the Redis commands per task
(from INFO commandstats, so other clients of the same Redis add to it), then the cost
of one check in the worker. Uses its own queue; the revocations it adds expire in 5 min.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
import uuid

from machinery_aio import Config, Server, Signature
from machinery_aio.drivers.redis.backend import RedisBackend


async def commands(backend: RedisBackend) -> int:
    stats = await backend.client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values() if isinstance(v, dict))


async def drain(server: Server, tasks: int, concurrency: int, check: bool) -> tuple[float, float]:
    backend = server.backend
    assert isinstance(backend, RedisBackend)
    sigs = [Signature(name="noop") for _ in range(tasks)]
    await server.send_tasks(sigs)
    worker = server.new_worker("drain", concurrency=concurrency, run_scheduler=False)
    if not check:
        worker.runner.revocations = None
    before = await commands(backend)
    started = time.perf_counter()
    async with worker:
        for sig in sigs[-concurrency:]:
            await server.get_async_result(sig.uuid).get(timeout=600)
        elapsed = time.perf_counter() - started
        after = await commands(backend)
    return tasks / elapsed, (after - before) / tasks


async def run(url: str, tasks: int, concurrency: int, revoked: int) -> None:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    config = Config(broker=url, result_backend=url, default_queue=f"{name}_q", results_expire_in=300)
    config.redis.delayed_tasks_key = f"{name}_delayed"
    server = Server(config)

    @server.task("noop")
    async def noop() -> None:
        return None

    try:
        rate, per_task = await drain(server, tasks, concurrency, check=False)
        print(f"without the check:          {rate:8.0f} tasks/s, {per_task:.2f} Redis commands per task")
        rate, per_task = await drain(server, tasks, concurrency, check=True)
        print(f"check, nothing revoked:     {rate:8.0f} tasks/s, {per_task:.2f} Redis commands per task")
        for _ in range(revoked):
            await server.revoke(f"task_{name}_{uuid.uuid4().hex}")
        rate, per_task = await drain(server, tasks, concurrency, check=True)
        print(f"check, {revoked} others revoked: {rate:8.0f} tasks/s, {per_task:.2f} Redis commands per task")
        worker = server.new_worker("probe", concurrency=1, run_scheduler=False)
        async with worker:
            await asyncio.sleep(0.5)  # the revoked set is loaded
            probe = worker.revocations
            loops = 1_000_000
            seconds = timeit.timeit(lambda: probe.check("task_not_revoked"), number=loops)
            print(f"one check in the worker:    {seconds / loops * 1e9:.0f} ns (no round trip)")
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/1")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--revoked", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.tasks, args.concurrency, args.revoked))


if __name__ == "__main__":
    main()
