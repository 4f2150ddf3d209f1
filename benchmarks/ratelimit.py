"""How closely a rate limit holds across two worker processes on Redis.

    python benchmarks/ratelimit.py [--url redis://127.0.0.1:6379/1] [--rate 20/s] [--tasks 100]

Starts ``machinery-aio worker --processes 2`` with this module as the app, sends
``--tasks`` tasks limited to ``--rate`` at once, and prints the rate achieved, the most
starts in any one-second window, the smallest gap between two starts and how many each
process ran (start times from Redis's clock). Uses its own queue and keys, deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from machinery_aio import Arg, Config, Server, Signature, TaskContext
from machinery_aio.drivers.redis.connection import RedisClient, create_redis

ROOT = Path(__file__).resolve().parent.parent

server = Server(Config.from_env())
_client: RedisClient | None = None


async def bench_limited(ctx: TaskContext, key: str) -> None:
    global _client
    if _client is None:
        _client = create_redis(server.config.broker, server.config)
    seconds, micros = await _client.time()
    await _client.rpush(key, f"{seconds + micros / 1e6:.6f} {os.getpid()}")


server.register_task("bench_limited", bench_limited, rate_limit=os.environ.get("BENCH_RATE", "20/s"))


async def run(url: str, rate: str, tasks: int) -> None:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    config = Config(broker=url, result_backend=url, default_queue=f"{name}_q", results_expire_in=300)
    config.redis.delayed_tasks_key = f"{name}_delayed"
    env = {
        **os.environ,
        "BROKER": url,
        "RESULT_BACKEND": url,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
        "RESULTS_EXPIRE_IN": "300",
        "BENCH_RATE": rate,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "machinery_aio", "worker", "-A", "benchmarks.ratelimit:server"]
    command += ["--processes", "2", "-c", "10", "--no-scheduler", "--loglevel", "WARNING"]
    workers = await asyncio.create_subprocess_exec(*command, env=env, cwd=ROOT)
    client = create_redis(url, config)
    sender = Server(config)
    key = f"{name}:starts"
    try:
        consumers = "{" + config.default_queue + "}:consumers"
        deadline = time.monotonic() + 60
        while await client.zcard(consumers) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the two worker processes did not start within 60 s")
            await asyncio.sleep(0.1)
        await sender.send_tasks([Signature(name="bench_limited", args=[Arg.of(key)]) for _ in range(tasks)])
        while await client.llen(key) < tasks:  # noqa: ASYNC110 - the workers write to Redis
            await asyncio.sleep(0.2)
        rows = [line.decode().split() for line in await client.lrange(key, 0, -1)]
        starts = sorted(float(t) for t, _ in rows)
        busiest = max(sum(1 for s in starts if t <= s < t + 1.0) for t in starts)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        per_process: dict[str, int] = {}
        for _, pid in rows:
            per_process[pid] = per_process.get(pid, 0) + 1
        span = starts[-1] - starts[0]
        print(f"{tasks} tasks limited to {rate} on 2 processes: {span:.2f} s from first to last start")
        print(f"achieved {(tasks - 1) / span:.2f} starts/s; most in any 1 s window: {busiest}")
        counts = sorted(per_process.values())
        print(f"smallest gap between starts: {min(gaps) * 1000:.1f} ms; per process: {counts}")
    finally:
        workers.send_signal(signal.SIGTERM)
        await asyncio.wait_for(workers.wait(), 60)
        await sender.close()
        async for stale in client.scan_iter(match=f"*{name}*"):
            await client.delete(stale)
        await client.delete("{machinery_aio:rate:bench_limited}")
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/1")
    parser.add_argument("--rate", default="20/s")
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.rate, args.tasks))


if __name__ == "__main__":
    main()
