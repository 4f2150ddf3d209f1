"""Case 7: tasks whose exceptions cannot be pickled or printed, whose results cannot be
serialised, that block the event loop past their time limit or exceed it: each ends in a
clear FAILURE and the worker goes on with the next task."""

from __future__ import annotations

import pytest

from machinery_aio import Arg, Server, Signature, TaskFailedError
from machinery_aio.drivers.redis.connection import RedisClient
from tests.faults.conftest import Workers, record_figures, redis_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CASES = [
    ("raise_unpicklable", [], "failed: holding a lock"),
    ("raise_bad_str", [], "<unprintable BadStrError>"),
    ("return_unserialisable", [], "lock"),
    ("block_loop", [1.5], "time limit of 0.5 s"),
    ("too_slow", [30.0], "exceeded its time limit of 0.5 s"),
    ("too_slow_sync", [2.0], "exceeded its time limit of 0.5 s"),
]


async def test_bad_tasks_fail_clearly_and_the_worker_goes_on(
    raw: RedisClient, unique: str, workers: Workers
) -> None:
    config = redis_config(unique)
    server = Server(config)
    proc = workers.start(config, "w", 4)
    failed = 0
    try:
        for n, (name, args, text) in enumerate(CASES):
            bad = Signature(uuid=f"task_{unique}_{n}", name=name, args=[Arg.of(a) for a in args])
            result = await server.send_task(bad)
            with pytest.raises(TaskFailedError) as caught:
                await result.get(timeout=30)
            assert text in str(caught.value), (name, str(caught.value))
            failed += 1
            good = Signature(
                uuid=f"task_{unique}_{n}_ok",
                name="count",
                args=[Arg.of(f"{unique}:runs"), Arg.of(str(n)), Arg.of(0.0)],
            )
            assert await (await server.send_task(good)).get(timeout=30) == str(n)
            assert proc.poll() is None, workers.log("w")
    finally:
        await server.close()
    record_figures(
        "7. task errors (6 kinds) + good tasks, Redis",
        sent=2 * len(CASES),
        completed=2 * len(CASES),
        lost=0,
        duplicated=0,
        note=f"{failed} clear FAILUREs, worker stayed up",
    )
