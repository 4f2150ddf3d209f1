"""Drain throughput and result latency per result backend, with the Redis broker.

    python -m benchmarks.backend_drain [--tasks 5000] [--concurrency 50] [--samples 200]
                                       [--backends redis,memcache,mongo,amqp,memory]

For each backend: enqueue no-op tasks on Redis, time one in-process worker draining them
with every result stored (the clock stops when the last tasks' results are read), then
the send -> result round trip of single tasks on an idle worker, waited for as the
backend waits (Redis pub/sub, AMQP push, MongoDB change stream or re-reads, Memcache
re-reads). Prints one markdown row per backend. The MongoDB figures come from nx-27017,
a MongoDB-protocol emulator on SQLite, not from MongoDB.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from machinery_aio import Config, Server, Signature

REDIS = "redis://127.0.0.1:6379/1"
BACKENDS = {
    "memory": "memory://bench",
    "redis": REDIS,
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "memcache": "memcache://127.0.0.1:11211",
    "mongo": "mongodb://127.0.0.1:27017/machinery_aio_bench",
}


async def measure(backend: str, tasks: int, concurrency: int, samples: int) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    config = Config(
        broker=REDIS, result_backend=BACKENDS[backend], default_queue=f"{name}_q", results_expire_in=300
    )
    config.redis.delayed_tasks_key = f"{name}_delayed"
    server = Server(config)

    @server.task("noop")
    async def noop() -> None:
        return None

    try:
        sigs = [Signature(name="noop") for _ in range(tasks)]
        await server.send_tasks(sigs)
        started = time.perf_counter()
        async with server.new_worker("drain", concurrency=concurrency):
            for sig in sigs[-concurrency:]:
                await server.get_async_result(sig.uuid).get(timeout=900)
            rate = tasks / (time.perf_counter() - started)
            async with server.new_worker("latency", concurrency=10):
                latencies = []
                for _ in range(samples):
                    started = time.perf_counter()
                    result = await server.send_task(Signature(name="noop"))
                    await result.get(timeout=30)
                    latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        label = f"{backend} (nx-27017 emulator)" if backend == "mongo" else backend
        return f"| {label} | {tasks} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
    finally:
        await server.close()


async def main(backends: list[str], tasks: int, concurrency: int, samples: int) -> None:
    print(f"Redis broker, one in-process worker at concurrency {concurrency}")
    print("| result backend | tasks | drain tasks/s | round trip p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for backend in backends:
        print(await measure(backend, tasks, concurrency, samples), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--backends", default="memory,redis,amqp,memcache,mongo")
    args = parser.parse_args()
    chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(BACKENDS)}")
    asyncio.run(main(chosen, args.tasks, args.concurrency, args.samples))
