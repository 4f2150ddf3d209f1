"""A worker that also sends periodic tasks; stops cleanly on SIGTERM or Ctrl-C.

Start it with ``python examples/periodic_worker.py`` (memory://: the worker runs what it
schedules), or on Redis with ``BROKER=redis://127.0.0.1:6379/0
RESULT_BACKEND=redis://127.0.0.1:6379/0 python examples/periodic_worker.py``; any number of
such workers send each tick once. ``machinery-aio worker -A examples.periodic_worker:server``
runs the same server from the command line.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from machinery_aio import Config, Server, Signature

server = Server(Config.from_env())


@server.task("heartbeat")
async def heartbeat() -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"heartbeat at {now}", flush=True)
    return now


@server.task("report")
async def report() -> str:
    print("daily report sent", flush=True)
    return "sent"


server.register_periodic_task("@every 1s", "heartbeat", Signature(name="heartbeat"))
server.register_periodic_task("0 7 * * *", "daily-report", Signature(name="report"), timezone="UTC")


async def main() -> None:
    worker = server.new_worker("periodic-example", concurrency=4)
    print("worker started; SIGTERM or Ctrl-C stops it", flush=True)
    await worker.launch()  # runs the scheduler too; returns after a graceful stop
    await server.close()
    print("worker stopped", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
