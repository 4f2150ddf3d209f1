"""Chords and restarts on the Memcache and MongoDB result backends, with the Redis broker
and two worker processes: every chord's callback runs exactly once, round after round; a
result backend restarted while tasks run loses no state a client waits for.

The always-run size is 10 chords of 100 members per backend; ``MACHINERY_FAULTS_CHORDS=500x20``
adds 20 chords of 500 members (the issue's full size; about 7 minutes on memcached and half
an hour on the nx-27017 emulator on a busy 2-core machine)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from machinery_aio import Arg, Chord, Config, Group, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from tests.conftest import require_server
from tests.faults.conftest import REDIS_URL, Workers, record_figures
from tests.support.memcache import PrivateMemcached, delete_keys
from tests.support.mongo import PrivateMongo, delete_documents

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MEMCACHE_URL = "memcache://127.0.0.1:11211"
MONGO_URL = "mongodb://127.0.0.1:27017/machinery_aio_faults"


def _sizes() -> list[tuple[int, int]]:
    extra = os.environ.get("MACHINERY_FAULTS_CHORDS", "")
    sizes = [(100, 10)]
    for item in filter(None, (p.strip() for p in extra.split(","))):
        members, _, rounds = item.partition("x")
        sizes.append((int(members), int(rounds)))
    return sizes


SIZES = _sizes()


def config_for(backend_url: str, unique: str) -> Config:
    config = Config(
        broker=REDIS_URL, result_backend=backend_url, default_queue=f"{unique}_q", results_expire_in=600
    )
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    config.redis.consumer_timeout = 3
    return config


@pytest.fixture(params=["memcache", "mongo"])
async def backend_url(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[str]:
    """The shared memcached or MongoDB-protocol server; the test's records deleted after."""
    if request.param == "memcache":
        require_server("127.0.0.1", 11211, "memcached")
        names: set[str] = set()
        request.node.stash[NAMES] = names
        yield MEMCACHE_URL
        await delete_keys(MEMCACHE_URL, names)
    else:
        require_server("127.0.0.1", 27017, "the MongoDB-protocol server (nx-27017)")
        yield MONGO_URL
        await delete_documents(MONGO_URL, unique)


NAMES = pytest.StashKey[set[str]]()


def chord(unique: str, n: int, key: str, members: int) -> Chord:
    sigs = [
        Signature(uuid=f"task_{unique}_{n}_{i}", name="member", args=[Arg.of(key), Arg.of(i), Arg.of(False)])
        for i in range(members)
    ]
    callback = Signature(uuid=f"chord_{unique}_{n}", name="chord_total", args=[Arg.of(key)])
    return Chord(Group(*sigs, group_uuid=f"group_{unique}_{n}"), callback)


async def stop(workers: Workers) -> None:
    for proc in workers.procs.values():
        proc.send_signal(signal.SIGTERM)
    for tag, proc in workers.procs.items():
        assert proc.wait(60) == 0, workers.log(tag)


@pytest.mark.parametrize(
    ("members", "rounds"),
    [pytest.param(m, r, id=f"{m}x{r}", marks=pytest.mark.timeout(max(600, m * r))) for m, r in SIZES],
)
async def test_chords_on_two_workers_call_back_once_each(
    request: pytest.FixtureRequest,
    backend_url: str,
    raw: RedisClient,
    unique: str,
    workers: Workers,
    members: int,
    rounds: int,
) -> None:
    config = config_for(backend_url, unique)
    server = Server(config)
    names = request.node.stash.get(NAMES, set())
    try:
        for tag in ("a", "b"):
            workers.start(config, tag, 8)
        for n in range(rounds):
            key = f"{unique}:cb{n}"
            made = chord(unique, n, key, members)
            names.update(s.uuid for s in made.group.tasks)
            names.update((made.group.group_uuid, made.callback.uuid))
            result = await server.send_chord(made)
            assert await result.get(timeout=120) == sum(range(members))
            assert await raw.scard(f"{key}:pids") == 2, "both workers ran members"
        await asyncio.sleep(1)  # a second (wrong) callback would be sent by now
        await stop(workers)
        calls = [int(await raw.get(f"{unique}:cb{n}") or 0) for n in range(rounds)]
    finally:
        await server.close()
    record_figures(
        f"chord {members} x{rounds}, 2 workers, {backend_url.split(':')[0]}",
        sent=rounds * (members + 1),
        completed=rounds * members + sum(calls),
        lost=rounds - sum(min(c, 1) for c in calls),
        duplicated=sum(max(c - 1, 0) for c in calls),
        note=f"callback runs {sorted(set(calls))}",
    )
    assert calls == [1] * rounds


@pytest.mark.parametrize("kind", ["memcache", "mongo"])
async def test_a_backend_restarted_mid_run_loses_no_state_a_client_waits_for(
    kind: str, raw: RedisClient, unique: str, workers: Workers, tmp_path: Path
) -> None:
    """The backend server is killed while two workers run 20 one-second tasks and a client
    waits for them, then started again: every waiter gets its SUCCESS. (memcached comes
    back empty, so only states written after the restart exist; MongoDB keeps its data.)"""
    private: PrivateMemcached | PrivateMongo
    private = PrivateMemcached() if kind == "memcache" else PrivateMongo(tmp_path)
    private.start()
    config = config_for(private.url, unique)
    server = Server(config)
    try:
        for tag in ("a", "b"):
            workers.start(config, tag, 10)
        sigs = [
            Signature(
                uuid=f"task_{unique}_{i}",
                name="count",
                args=[Arg.of(f"{unique}:runs"), Arg.of(str(i)), Arg.of(1.0)],
            )
            for i in range(20)
        ]
        results = [await server.send_task(s) for s in sigs]
        waiting = [asyncio.create_task(r.get(timeout=120)) for r in results]
        await asyncio.sleep(0.5)  # the tasks are running
        private.stop()
        await asyncio.sleep(1.0)  # they finish while the server is away
        private.start()
        async with asyncio.timeout(150):  # a hang guard
            values = await asyncio.gather(*waiting)
        await stop(workers)
        runs = await raw.hgetall(f"{unique}:runs")
    finally:
        await server.close()
        private.stop()
    assert values == [str(i) for i in range(20)]
    assert len(runs) == 20
    record_figures(
        f"{kind} restarted mid-run, 2 workers",
        sent=20,
        completed=len(values),
        lost=20 - len(values),
        duplicated=sum(int(v) - 1 for v in runs.values()),
    )
