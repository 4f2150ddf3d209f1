"""Drain throughput, result latency and AWS requests per task of one worker on SQS.

    python -m benchmarks.sqs_drain [--tasks 1000] [--concurrency 50] [--results dynamodb|redis]

Against moto's server by default (``AWS_ENDPOINT_URL``, default http://127.0.0.1:5000; start
it with ``python -m tests.services start moto``): **emulator figures**, which say nothing
about AWS's own speed, but the request counts are what AWS would bill. Uses queues and tables
of its own and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import Counter
from typing import Any

from machinery_aio import Config, Server, Signature
from machinery_aio.drivers.aws.backend import DynamoDBBackend
from machinery_aio.drivers.aws.broker import SQSBroker

SQS_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/"
DYNAMODB_URL = "https://dynamodb.us-east-1.amazonaws.com"
REDIS_URL = "redis://127.0.0.1:6379/1"


def count_requests(client: Any, counter: Counter[str]) -> None:
    def seen(model: Any, **_: Any) -> None:
        counter[f"{client.meta.service_model.service_name}:{model.name}"] += 1

    client.meta.events.register("before-call", seen)


async def run(tasks: int, concurrency: int, results: str, samples: int) -> None:
    for name, value in (
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    name = f"bench{uuid.uuid4().hex[:8]}"
    backend = DYNAMODB_URL if results == "dynamodb" else REDIS_URL
    config = Config(broker=SQS_URL, result_backend=backend, default_queue=f"{name}_q", results_expire_in=300)
    config.dynamodb.task_states_table = f"{name}_states"
    config.dynamodb.group_metas_table = f"{name}_groups"
    config.sqs.wait_time_seconds = 1
    server = Server(config)

    @server.task("noop")
    async def noop() -> None:
        return None

    counter: Counter[str] = Counter()
    try:
        await server.connect()
        assert isinstance(server.broker, SQSBroker)
        count_requests(await server.broker.clients.get(), counter)
        if isinstance(server.backend, DynamoDBBackend):
            count_requests(await server.backend.clients.get(), counter)
        sigs = [Signature(name="noop") for _ in range(tasks)]
        started = time.perf_counter()
        await server.send_tasks(sigs)
        print(f"enqueue {tasks}: {time.perf_counter() - started:.2f} s  [emulator figure]")
        sent = Counter(counter)

        started, cpu = time.perf_counter(), time.process_time()
        async with server.new_worker("drain", concurrency=concurrency, run_scheduler=False):
            for sig in sigs[-concurrency:]:
                await server.get_async_result(sig.uuid).get(timeout=600)
            for sig in sigs:  # every result is there
                await server.get_async_result(sig.uuid).get(timeout=600)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        print(
            f"drain {tasks} at concurrency {concurrency}, results in {results}: {elapsed:.2f} s, "
            f"{tasks / elapsed:.0f} tasks/s, {cpu / tasks * 1e6:.0f} us CPU per task  [emulator figure]"
        )
        drained = counter - sent
        print("requests per task (send, then drain; the drain's waits for results included):")
        for label, counts in (("send", sent), ("drain", drained)):
            for call, n in sorted(counts.items()):
                print(f"  {label:<6} {call:<36} {n / tasks:6.2f}")

        async with server.new_worker("latency", concurrency=10, run_scheduler=False):
            latencies = []
            for _ in range(samples):
                started = time.perf_counter()
                result = await server.send_task(Signature(name="noop"))
                await result.get(timeout=60)
                latencies.append(time.perf_counter() - started)
        latencies.sort()
        print(
            f"send -> result latency, idle worker: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
            f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms  [emulator figure]"
        )
    finally:
        await cleanup(server, name)
        await server.close()


async def cleanup(server: Server, name: str) -> None:
    broker = server.broker
    assert isinstance(broker, SQSBroker)
    client = await broker.clients.get()
    for url in (await client.list_queues(QueueNamePrefix=name)).get("QueueUrls", []):
        await client.delete_queue(QueueUrl=url)
    if isinstance(server.backend, DynamoDBBackend):
        dynamodb = await server.backend.clients.get()
        for table in (server.backend.states_table, server.backend.groups_table):
            await dynamodb.delete_table(TableName=table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--results", choices=["dynamodb", "redis"], default="dynamodb")
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.tasks, args.concurrency, args.results, args.samples))


if __name__ == "__main__":
    main()
