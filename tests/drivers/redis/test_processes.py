"""Worker processes: SIGKILL in the middle of a drain loses nothing; a chord whose members
finish on two workers fires once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_aio import Chord, Group, Server
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.keys import QueueKeys
from tests.drivers.redis.conftest import make_config
from tests.support.redis import eventually, sig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[3]

Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(redis_url: str, unique: str, tmp_path: Path) -> Iterator[Starter]:
    """Start ``machinery-aio worker`` processes on the test's queue; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(tag: str, concurrency: int = 10, **env: str) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            "BROKER": redis_url,
            "RESULT_BACKEND": redis_url,
            "DEFAULT_QUEUE": f"{unique}_q",
            "REDIS_DELAYED_TASKS_KEY": f"{unique}_delayed",
            "REDIS_CONSUMER_TIMEOUT": "3",
            "RESULTS_EXPIRE_IN": "600",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        with (tmp_path / f"{tag}.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "machinery_aio",
                    "worker",
                    "-A",
                    "tests.apps.redis_app:server",
                    "-c",
                    str(concurrency),
                    "-t",
                    tag,
                    "--no-scheduler",
                    "--loglevel",
                    "WARNING",
                ],
                env=environ,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


async def _processing(raw: RedisClient, queue: str) -> dict[bytes, int]:
    keys = QueueKeys(queue)
    pattern = keys.processing("*")
    return {key: await raw.llen(key) async for key in raw.scan_iter(match=pattern)}


async def test_sigkill_in_the_middle_of_a_drain_loses_nothing(
    redis_config: Any, raw: RedisClient, unique: str, ids: Any, start_worker: Starter
) -> None:
    server = Server(redis_config)
    queue = redis_config.default_queue
    done_key = f"{unique}:done"
    count = 2000
    sigs = [sig(ids(i), "record", done_key, str(i), 0.02) for i in range(count)]
    try:
        await server.send_tasks(sigs)
        first = start_worker("first", concurrency=10)
        await eventually(lambda: _at_least(raw.scard(done_key), 200), timeout=120)
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        held = await _processing(raw, queue)
        assert sum(held.values()) > 0  # it died holding claimed, unfinished messages
        assert await raw.scard(done_key) < count

        second = start_worker("second", concurrency=10)
        await eventually(lambda: _at_least(raw.scard(done_key), count), timeout=240, interval=0.2)
        states = await server.backend.get_states([s.uuid for s in sigs])
        assert all(s is not None and s.is_success() for s in states)
        assert int(await raw.get(f"{done_key}:runs")) >= count  # at least once
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        assert await raw.llen(queue) == 0
        assert not await _processing(raw, queue)
    finally:
        await server.close()


async def _at_least(value: Any, minimum: int) -> bool:
    return int(await value) >= minimum


@pytest.mark.parametrize("go_compatible", ["true", "false"], ids=["go-mutex", "lock-free"])
async def test_a_chord_finished_on_two_workers_fires_once(
    redis_url: str,
    unique: str,
    raw: RedisClient,
    ids: Any,
    start_worker: Starter,
    go_compatible: str,
) -> None:
    config = make_config(redis_url, unique)
    config.go_compatible = go_compatible == "true"
    server = Server(config)
    calls_key = f"{unique}:calls"
    try:
        workers = [start_worker(f"w{n}", concurrency=4, GO_COMPATIBLE=go_compatible) for n in (1, 2)]
        consumers = QueueKeys(config.default_queue).consumers
        await eventually(lambda: _at_least(raw.zcard(consumers), 2), timeout=60)
        members = [sig(ids(i), "member", calls_key, i, 0.05) for i in range(40)]
        chord = Chord(
            Group(*members, group_uuid=ids("g", "group")), sig(ids("cb", "chord"), "chord_total", calls_key)
        )
        result = await server.send_chord(chord)
        assert await result.get(timeout=120) == sum(range(40))
        assert await raw.scard(f"{calls_key}:pids") == 2  # members ran on both workers
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            assert proc.wait(60) == 0
        assert await raw.get(calls_key) == b"1"
    finally:
        await server.close()
