"""An app for the periodic-task tests that run workers and ``beat`` in subprocesses.

Configured by environment variables: Go Machinery's with the prefix ``PTEST_``
(``PTEST_BROKER``, ``PTEST_RESULT_BACKEND``, ``PTEST_LOCK``, ``PTEST_APP_NAME``
...) and ``PTEST_KIND`` (task or chord), ``PTEST_NAME``, ``PTEST_SPEC``,
``PTEST_RECORD`` (a Redis URL) and ``PTEST_PREFIX`` (record key prefix).

It records in Redis: ``<prefix>:up`` (pids of started processes),
``<prefix>:sent`` (every publish of the schedule's work, by the sending
process) and ``<prefix>:ran`` (every run of ``ptest_record``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio

from machinery_aio import Arg, Config, Server, Signature, TaskContext
from machinery_aio.periodic import PERIODIC_NAME_HEADER, PERIODIC_TICK_HEADER


async def _push(url: str, key: str, record: dict[str, Any]) -> None:
    async with redis.asyncio.from_url(url) as client:
        await client.rpush(key, json.dumps(record))


def register_tasks(server: Server, record_url: str, prefix: str) -> None:
    async def ptest_record(ctx: TaskContext, *results: int) -> int:
        await _push(
            record_url,
            f"{prefix}:ran",
            {
                "tick": ctx.headers.get(PERIODIC_TICK_HEADER),
                "uuid": ctx.task_uuid,
                "results": list(results),
                "pid": os.getpid(),
            },
        )
        return len(results)

    async def ptest_add(a: int, b: int) -> int:
        return a + b

    server.register_task("ptest_record", ptest_record)
    server.register_task("ptest_add", ptest_add)


def build(env: Mapping[str, str]) -> Server:
    """The server a test process uses (also used in-process to drain queues)."""
    config = Config.from_env("PTEST_", env)
    server = Server(config)
    record_url, prefix = env["PTEST_RECORD"], env["PTEST_PREFIX"]
    register_tasks(server, record_url, prefix)
    return server


def make_server() -> Server:
    """``-A tests.apps.periodic_app:make_server``: the server with its periodic entry."""
    env = os.environ
    server = build(env)
    record_url, prefix, name = env["PTEST_RECORD"], env["PTEST_PREFIX"], env["PTEST_NAME"]

    chord = env.get("PTEST_KIND") == "chord"
    scheduled = "ptest_add" if chord else "ptest_record"  # what the scheduler itself publishes

    async def record_send(sig: Signature) -> None:
        headers = sig.headers or {}
        if headers.get(PERIODIC_NAME_HEADER) != name or sig.name != scheduled:
            return
        await _push(
            record_url,
            f"{prefix}:sent",
            {
                "tick": headers.get(PERIODIC_TICK_HEADER),
                "uuid": sig.uuid,
                "group": sig.group_uuid,
                "pid": os.getpid(),
            },
        )

    server.set_pre_publish_handler(record_send)
    add = Signature(name="ptest_add", args=[Arg(type="int64", value=1), Arg(type="int64", value=2)])
    if chord:
        server.register_periodic_chord(env["PTEST_SPEC"], name, Signature(name="ptest_record"), add, add)
    else:
        server.register_periodic_task(env["PTEST_SPEC"], name, Signature(name="ptest_record"))
    with redis.Redis.from_url(record_url) as client:
        client.sadd(f"{prefix}:up", os.getpid())
    return server


def empty_server() -> Server:
    """A server with no periodic tasks."""
    return Server(Config())


def inspect_server() -> Server:
    """A server with a few schedules, for ``inspect periodic``."""
    server = Server(Config())
    server.register_periodic_task(
        "0 9 * * mon-fri", "morning-report", Signature(name="report"), timezone="Europe/Paris"
    )
    server.register_periodic_chord(
        "@every 30s", "rollup", Signature(name="sum"), Signature(name="count"), Signature(name="count")
    )
    return server
