"""Rate limits: parsing, the per-worker limiter's turns, and a limited task on one worker
neither holding its slot nor stopping other tasks."""

from __future__ import annotations

import time

import pytest

from machinery_aio import Config, Server
from machinery_aio.ratelimit import LocalRateLimiter, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [("10/s", 10, 1.0), ("100/m", 100, 60.0), (" 5 / hour ", 5, 3600.0), ("2.5/sec", 2.5, 1.0)],
)
def test_rates_are_parsed(text: str, count: float, per: float) -> None:
    rate = parse_rate(text)
    assert (rate.count, rate.per) == (count, per)
    assert rate.interval == per / count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "is not a rate"),
        ("ten/s", "is not a rate"),
        ("10/d", "unknown unit 'd'"),
        ("0/s", "more than 0"),
        ("-1/s", "is not a rate"),
        ("", "is not a rate"),
    ],
)
def test_bad_rates_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)
    server = Server(Config())
    with pytest.raises(ValueError, match=message):
        server.task("limited", rate_limit=text)(lambda: None)
    assert not server.is_task_registered("limited")


def test_a_rate_limit_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_rate(10)  # type: ignore[arg-type]


async def test_the_local_limiter_gives_evenly_spaced_turns() -> None:
    limiter = LocalRateLimiter()
    rate = parse_rate("10/s")
    assert await limiter.acquire("a", rate, "t1") == 0
    second = await limiter.acquire("a", rate, "t2")
    third = await limiter.acquire("a", rate, "t3")
    assert 0 < second < third  # one interval, then two
    assert await limiter.acquire("b", rate, "t4") == 0  # each name has its own turns
    again = await limiter.acquire("a", rate, "t3")  # asked again before its turn: the same turn
    assert 0 < again <= third


async def test_a_limited_task_does_not_hold_up_other_tasks(unique: str) -> None:
    server = Server(Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}"))
    starts: list[float] = []

    @server.task("limited", rate_limit="5/s")
    async def limited(n: int) -> int:
        starts.append(time.monotonic())
        return n

    @server.task("free")
    async def free(n: int) -> int:
        return n

    try:
        async with server.new_worker("w", concurrency=2, run_scheduler=False):
            waiting = [await limited.delay(i) for i in range(10)]
            other = await free.delay(99)
            assert await other.get(timeout=30) == 99
            assert len(starts) < 10  # the free task did not wait for the limited ones (2 s)
            assert [await r.get(timeout=30) for r in waiting] == list(range(10))
    finally:
        await server.close()
