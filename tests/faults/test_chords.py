"""Case 4: a 1,000-member chord processed by two worker processes, three times over: the
callback runs exactly once each time. With failing members the callback never runs; it is
recorded as FAILURE naming the failed members and its on_error callback runs exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from machinery_aio import Arg, Chord, Config, Group, Server, Signature, TaskFailedError
from machinery_aio.drivers.redis.connection import RedisClient
from tests.faults.conftest import Workers, amqp_config, record_figures, redis_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MEMBERS = 1000
ROUNDS = 3


@pytest.fixture(params=["redis", "rabbitmq"])
def config(request: pytest.FixtureRequest, unique: str, raw: RedisClient) -> Config:
    if request.param == "redis":
        return redis_config(unique)
    vhost: str = request.getfixturevalue("vhost")
    return amqp_config(unique, vhost)


def chord(unique: str, n: int, key: str, failing: set[int]) -> Chord:
    members = [
        Signature(
            uuid=f"task_{unique}_{n}_{i}", name="member", args=[Arg.of(key), Arg.of(i), Arg.of(i in failing)]
        )
        for i in range(MEMBERS)
    ]
    on_error = Signature(uuid=f"task_{unique}_{n}_onerror", name="chord_error", args=[Arg.of(key)])
    callback = Signature(
        uuid=f"chord_{unique}_{n}", name="chord_total", args=[Arg.of(key)], on_error=[on_error]
    )
    return Chord(Group(*members, group_uuid=f"group_{unique}_{n}"), callback)


def two_workers(config: Config, workers: Workers) -> None:
    for tag in ("a", "b"):
        workers.start(config, tag, 8)


async def stop(workers: Workers) -> None:
    for proc in workers.procs.values():
        proc.send_signal(signal.SIGTERM)
    for tag, proc in workers.procs.items():
        assert proc.wait(60) == 0, workers.log(tag)


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_big_chord_on_two_workers_calls_back_once(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    server = Server(config)
    try:
        two_workers(config, workers)
        for n in range(ROUNDS):
            key = f"{unique}:cb{n}"
            result = await server.send_chord(chord(unique, n, key, set()))
            assert await result.get(timeout=120) == sum(range(MEMBERS))
            assert await raw.scard(f"{key}:pids") == 2, "both workers ran members"
        await asyncio.sleep(1)  # a second (wrong) callback would be sent by now
        await stop(workers)
        calls = [int(await raw.get(f"{unique}:cb{n}") or 0) for n in range(ROUNDS)]
    finally:
        await server.close()
    record_figures(
        f"4. chord {MEMBERS} x{ROUNDS}, 2 workers, {config.broker.split(':')[0]}",
        sent=ROUNDS * (MEMBERS + 1),
        completed=ROUNDS * MEMBERS + sum(calls),
        lost=ROUNDS - sum(min(c, 1) for c in calls),
        duplicated=sum(max(c - 1, 0) for c in calls),
        note=f"callback runs {calls}",
    )
    assert calls == [1] * ROUNDS


async def test_a_chord_with_failing_members_fails_its_callback_once(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    server = Server(config)
    key = f"{unique}:cb"
    failing = {3, MEMBERS // 2, MEMBERS - 1}
    try:
        two_workers(config, workers)
        result = await server.send_chord(chord(unique, 0, key, failing))
        with pytest.raises(TaskFailedError) as caught:
            await result.callback.get(timeout=120)
        assert f"{len(failing)} of {MEMBERS} members failed" in str(caught.value)
        await until(
            lambda: raw.exists(f"{key}:errors"), "the on_error callback ran: " + workers.log("a")[-3000:]
        )
        states = await server.backend.get_states([r.task_uuid for r in result.group_results])
        assert sum(1 for s in states if s is not None and s.is_success()) == MEMBERS - 3
        assert {i for i, s in enumerate(states) if s is not None and s.is_failure()} == failing
        await asyncio.sleep(1)
        await stop(workers)
        assert await raw.get(f"{key}:errors") == b"1"
        assert b"3 of" in (await raw.get(f"{key}:error") or b"")
        assert await raw.get(key) is None  # the callback itself never ran
    finally:
        await server.close()
