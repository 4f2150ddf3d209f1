"""Every workflow with RabbitMQ as the broker, with the AMQP and the Redis result backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from machinery_aio import (
    Arg,
    Chain,
    Chord,
    Config,
    Group,
    RetryTaskLater,
    Server,
    Signature,
    State,
    TaskFailedError,
    gotime,
)
from machinery_aio.runner import ETA_TOLERANCE
from tests.drivers.amqp.conftest import (
    REDIS_BACKEND_URL,
    amqp_test_config,
    purge_recorded,
    require_redis_backend,
)
from tests.support.rabbitmq import Cleanup


def int_args(*values: int) -> list[Arg]:
    return [Arg(type="int64", value=v) for v in values]


@pytest.fixture(params=["amqp", "redis"])
async def server(
    request: pytest.FixtureRequest, unique: str, cleanup: Cleanup, amqp_server: Callable[[Config], Server]
) -> AsyncIterator[Server]:
    """A server on RabbitMQ with the requested result backend and the tasks below."""
    if request.param == "redis":
        require_redis_backend()
        config = amqp_test_config(unique, backend=REDIS_BACKEND_URL)
    else:
        config = amqp_test_config(unique)
    server = amqp_server(config)
    calls: dict[str, int] = {}

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    @server.task("multiply")
    async def multiply(*numbers: int) -> int:
        product = 1
        for n in numbers:
            product *= n
        return product

    @server.task("collect")
    async def collect(*numbers: int) -> list[int]:
        return list(numbers)

    @server.task("fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @server.task("flaky")
    async def flaky(key: str, failures: int) -> int:
        calls[key] = calls.get(key, 0) + 1
        if calls[key] <= failures:
            raise RuntimeError(f"attempt {calls[key]} fails")
        return calls[key]

    @server.task("later")
    async def later(key: str) -> str:
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            raise RetryTaskLater("not yet", 1.0)
        return "done"

    @server.task("clock")
    async def clock() -> float:
        return time.time()

    yield server
    if request.param == "redis":
        await purge_recorded(server, cleanup)


async def test_task(server: Server) -> None:
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(Signature(name="add", args=int_args(1, 2)))
        assert await result.get(timeout=30) == 3
    state = await result.get_state()
    assert state.state is State.SUCCESS
    assert state.task_name == "add"
    assert state.results is not None
    assert [(r.type, r.value) for r in state.results] == [("int64", 3)]
    assert state.created_at.year > 2000  # PENDING's timestamp is kept


async def test_failed_task(server: Server) -> None:
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(Signature(name="fail", args=[Arg(type="string", value="boom")]))
        with pytest.raises(TaskFailedError, match="boom"):
            await result.get(timeout=30)


async def test_group(server: Server) -> None:
    group = Group(*(Signature(name="add", args=int_args(i, i)) for i in range(6)))
    async with server.new_worker("w", concurrency=4):
        results = await server.send_group(group)
        assert [await r.get(timeout=30) for r in results] == [0, 2, 4, 6, 8, 10]


async def test_chord_gets_results_in_group_order(server: Server) -> None:
    group = Group(*(Signature(name="add", args=int_args(i, 1)) for i in range(8)))
    chord = Chord(group, Signature(name="collect"))
    async with server.new_worker("w", concurrency=4):
        result = await server.send_chord(chord)
        assert await result.get(timeout=60) == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_chord_with_failed_member_fails_the_callback(server: Server) -> None:
    group = Group(
        Signature(name="add", args=int_args(1, 1)),
        Signature(name="fail", args=[Arg(type="string", value="member broke")]),
    )
    chord = Chord(group, Signature(name="collect"))
    async with server.new_worker("w", concurrency=4):
        result = await server.send_chord(chord)
        with pytest.raises(TaskFailedError):
            await result.get(timeout=60)
        with pytest.raises(TaskFailedError, match="member broke"):
            await result.callback.get(timeout=60)
        state = await result.callback.get_state()
        assert state.state is State.FAILURE
        assert "member broke" in state.error


async def test_chain(server: Server) -> None:
    chain = Chain(
        Signature(name="add", args=int_args(1, 1)),
        Signature(name="add", args=int_args(5, 5)),
        Signature(name="multiply", args=int_args(4)),
    )
    async with server.new_worker("w", concurrency=4):
        result = await server.send_chain(chain)
        assert await result.get(timeout=60) == 48


async def test_retry_counts_down_and_succeeds(server: Server) -> None:
    sig = Signature(
        name="flaky", args=[Arg(type="string", value="k"), Arg(type="int64", value=2)], retry_count=3
    )
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(sig)
        assert await result.get(timeout=60) == 3


async def test_retry_exhausted_fails(server: Server) -> None:
    sig = Signature(
        name="flaky", args=[Arg(type="string", value="k2"), Arg(type="int64", value=5)], retry_count=1
    )
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(sig)
        with pytest.raises(TaskFailedError, match="attempt 2 fails"):
            await result.get(timeout=60)


async def test_retry_task_later(server: Server) -> None:
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(Signature(name="later", args=[Arg(type="string", value="r")]))
        assert await result.get(timeout=60) == "done"


async def test_eta_runs_not_before_its_time(server: Server) -> None:
    eta = gotime.now() + timedelta(seconds=2)
    async with server.new_worker("w", concurrency=4):
        result = await server.send_task(Signature(name="clock", eta=eta))
        ran_at = await result.get(timeout=60)
    assert ran_at >= (eta - ETA_TOLERANCE).timestamp()
