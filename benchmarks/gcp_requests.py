"""Pub/Sub requests per task: a drain of N tasks through one in-process worker, counting the
publish, pull, acknowledge and modify-ack-deadline requests the driver makes (the figures
behind "Costs per task" in docs/gcp.md).

``PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python -m benchmarks.gcp_requests [tasks] [concurrency]``;
results in memory. Emulator figures: how the driver batches, not Google's service's speed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

from machinery_aio import Config, Server
from machinery_aio.drivers.gcp.broker import GCPPubSubBroker

METHODS = {"publisher": ["publish"], "subscriber": ["pull", "acknowledge", "modify_ack_deadline"]}


def count_requests(broker: GCPPubSubBroker, counts: Counter[str], messages: Counter[str]) -> None:
    """Wrap the clients' methods so that every request (and the ack IDs or messages in it) is counted."""
    for side, names in METHODS.items():
        client = getattr(broker.clients, side)
        for name in names:
            original = getattr(client, name)

            async def counted(
                *args: Any, __name: str = name, __original: Any = original, **kwargs: Any
            ) -> Any:
                counts[__name] += 1
                items = kwargs.get("messages") or kwargs.get("ack_ids") or ()
                messages[__name] += len(items)
                response = await __original(*args, **kwargs)
                messages[__name] += len(getattr(response, "received_messages", ()))
                return response

            setattr(client, name, counted)


async def main(tasks: int, concurrency: int) -> None:
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        sys.exit("set PUBSUB_EMULATOR_HOST (the figures are meant for the emulator)")
    name = f"requests-{uuid.uuid4().hex[:8]}"
    server = Server(Config(broker=f"gcppubsub://machinery-bench/{name}", default_queue=name))

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    broker = server.broker
    assert isinstance(broker, GCPPubSubBroker)
    await server.connect()
    counts: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    count_requests(broker, counts, messages)
    results = await server.send_tasks([add.signature(i, 1) for i in range(tasks)])
    started = time.perf_counter()
    async with server.new_worker("requests", concurrency=concurrency, run_scheduler=False):
        for result in results:
            await result.get(timeout=120)
    seconds = time.perf_counter() - started
    await server.close()
    print(f"{tasks} tasks, one worker with concurrency {concurrency}, {seconds:.1f} s (Pub/Sub emulator)")
    for method in ("publish", "pull", "acknowledge", "modify_ack_deadline"):
        print(
            f"{method:>20}: {counts[method]:6d} requests, {counts[method] / tasks:.3f} per task, "
            f"{messages[method] / max(counts[method], 1):.1f} messages or ack IDs per request"
        )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [2000, 50][len(args) :])))
