"""A consumer that dies holding messages: ``python -m tests.support.crash <count>`` with the
Config as JSON in ``CRASH_CONFIG``. It fetches ``count`` messages from the default queue
without settling them, prints ``holding <count>`` and kills itself with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from machinery_aio import Config
from machinery_aio.drivers import create_broker
from machinery_aio.drivers.broker import Delivery

FETCH_FOR = 60.0
"""A hang guard: give up (exit 1) when the messages do not arrive within this many seconds."""


async def hold_then_die(count: int) -> None:
    config = Config.model_validate_json(os.environ["CRASH_CONFIG"])
    broker = create_broker(config)
    await broker.connect()
    consumer = broker.consumer(config.default_queue, prefetch=count, tag="crash")
    held: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FETCH_FOR
    while len(held) < count:
        if loop.time() > deadline:
            print(f"only {len(held)} of {count} messages arrived", file=sys.stderr, flush=True)
            sys.exit(1)
        held += await consumer.fetch(count - len(held))
    print(f"holding {len(held)}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(hold_then_die(int(sys.argv[1])))
