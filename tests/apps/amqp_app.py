"""A worker app for the RabbitMQ tests, run as ``machinery-aio worker -A tests.apps.amqp_app:server``.

The Server comes from Go Machinery's environment variables (BROKER,
RESULT_BACKEND, DEFAULT_QUEUE, AMQP_EXCHANGE ...). Two more variables drive
the ``gated`` task: RECORD_FILE (each start and finish is appended to it) and
GATE_FILE (tasks with an index at or above GATE_FROM wait until it exists).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from machinery_aio import Config, Server

server = Server(Config.from_env())


def _record(line: str) -> None:
    path = os.environ.get("RECORD_FILE")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@server.task("add")
async def add(*numbers: int) -> int:
    return sum(numbers)


@server.task("multiply")
async def multiply(*numbers: int) -> int:
    product = 1
    for n in numbers:
        product *= n
    return product


@server.task("gated")
def gated(index: int) -> int:
    """Runs in the worker's thread pool; waits for GATE_FILE when ``index >= GATE_FROM``."""
    _record(f"start {index}")
    gate = os.environ.get("GATE_FILE", "")
    if gate and index >= int(os.environ.get("GATE_FROM", "0")):
        while not Path(gate).exists():
            time.sleep(0.05)
    _record(f"done {index}")
    return index
