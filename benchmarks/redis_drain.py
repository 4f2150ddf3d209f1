"""Drain throughput and result latency of one worker process on Redis.

    python benchmarks/redis_drain.py [--url redis://127.0.0.1:6379/1] [--tasks 10000]
                                     [--concurrency 100] [--samples 300] [--uvloop]

Enqueues no-op tasks, then times one in-process worker draining them with every result
recorded, and the send -> result latency of single tasks on an idle worker. Uses its own
queue and delayed key and deletes what it wrote (task states expire after 5 minutes).
``--samples 0`` leaves the latency part out (for instruction counts under callgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from machinery_aio import Config, Server, Signature


async def run(url: str, tasks: int, concurrency: int, samples: int) -> None:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    config = Config(broker=url, result_backend=url, default_queue=f"{name}_q", results_expire_in=300)
    config.redis.delayed_tasks_key = f"{name}_delayed"
    server = Server(config)

    @server.task("noop")
    async def noop() -> None:
        return None

    try:
        sigs = [Signature(name="noop") for _ in range(tasks)]
        started = time.perf_counter()
        await server.send_tasks(sigs)
        print(f"enqueue {tasks}: {time.perf_counter() - started:.2f} s")

        started, cpu = time.perf_counter(), time.process_time()
        async with server.new_worker("drain", concurrency=concurrency):
            for sig in sigs[-concurrency:]:
                await server.get_async_result(sig.uuid).get(timeout=600)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        print(
            f"drain {tasks} at concurrency {concurrency}: {elapsed:.2f} s, "
            f"{tasks / elapsed:.0f} tasks/s, {cpu / tasks * 1e6:.0f} us CPU per task "
            "(producer waiting included)"
        )

        if samples <= 0:
            return
        async with server.new_worker("latency", concurrency=10):
            latencies = []
            for _ in range(samples):
                started = time.perf_counter()
                result = await server.send_task(Signature(name="noop"))
                await result.get(timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
        print(
            f"send -> result on an idle worker, ms: p50 {pick(0.5):.2f}  p90 {pick(0.9):.2f}"
            f"  p99 {pick(0.99):.2f}"
        )
    finally:
        client = getattr(server.broker, "client", None)
        if client is not None:
            async for key in client.scan_iter(match=f"*{name}*"):
                await client.delete(key)
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/1")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    coro = run(args.url, args.tasks, args.concurrency, args.samples)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
