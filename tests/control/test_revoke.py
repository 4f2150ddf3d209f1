"""Revoke on memory, Redis and RabbitMQ: pending, delayed and running tasks, workers started
later, chords and chains, and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from machinery_aio import (
    Chain,
    Chord,
    Config,
    Group,
    Server,
    State,
    TaskFailedError,
    TaskRevokedError,
)
from machinery_aio.drivers.control import Revocation
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.revoke import REVOKED, TERMINATED, Revocations
from tests.contract.conftest import DRIVERS, Driver
from tests.support.redis import eventually

pytestmark = pytest.mark.timeout(120)

CONTROL_DRIVERS = [d for d in DRIVERS if d.id in ("memory", "redis", "rabbitmq")]


@dataclass
class App:
    """A server with a few tasks that record what ran."""

    server: Server
    ran: list[Any] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)

    def another(self) -> Server:
        """A second Server on the same config: what a restarted worker process builds."""
        other = Server(self.server.config)
        self.servers.append(other)
        register(other, self.ran)
        return other


def register(server: Server, ran: list[Any]) -> None:
    @server.task("add")
    async def add(n: int) -> int:
        ran.append(n)
        return n

    @server.task("sleepy")
    async def sleepy(n: int) -> int:
        ran.append(("start", n))
        await asyncio.sleep(30)
        ran.append(("end", n))
        return n

    @server.task("blocking")
    def blocking(n: int) -> int:
        ran.append(("start", n))
        time.sleep(0.5)
        ran.append(("end", n))
        return n

    @server.task("collect")
    async def collect(*values: int) -> int:
        ran.append(("collect", values))
        return sum(values)


@pytest.fixture(params=CONTROL_DRIVERS, ids=[d.id for d in CONTROL_DRIVERS])
async def app(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[App]:
    driver: Driver = request.param
    driver.require_servers()
    config = driver.config(unique)
    server = Server(config)
    made = App(server)
    register(server, made.ran)
    yield made
    for other in [server, *made.servers]:
        await other.close()
    if driver.cleanup is not None:
        await driver.cleanup(
            Config(broker=config.broker, result_backend=config.result_backend), unique, set()
        )


def add_sig(server: Server, n: int, **options: Any) -> Any:
    task = server.registry["add"]
    from machinery_aio.tasks import Task

    handle: Task[Any, Any] = Task(server.publisher, task)
    return (handle.with_options(**options) if options else handle).signature(n)


async def test_a_revoked_pending_task_never_runs(app: App) -> None:
    server = app.server
    result = await server.send_task(add_sig(server, 1))
    assert await result.revoke() is True
    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        after = await server.send_task(add_sig(server, 2))
        assert await after.get(timeout=30) == 2
        with pytest.raises(TaskRevokedError) as caught:
            await result.get(timeout=30)
    assert isinstance(caught.value, TaskFailedError)
    state = await result.get_state()
    assert state.state is State.FAILURE
    assert "revoked" in state.error
    assert 1 not in app.ran


async def test_a_revoked_delayed_task_never_runs(app: App) -> None:
    server = app.server
    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        delayed = await server.send_task(add_sig(server, 1, countdown=1))
        await server.revoke(delayed.task_uuid)
        later = await server.send_task(add_sig(server, 2, countdown=2))
        assert await later.get(timeout=30) == 2
        with pytest.raises(TaskRevokedError):
            await delayed.get(timeout=30)
    assert app.ran == [2]


async def test_terminate_cancels_a_running_coroutine_and_the_worker_keeps_serving(app: App) -> None:
    server = app.server
    sleepy = server.registry["sleepy"]
    from machinery_aio.tasks import Task

    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        running = await Task(server.publisher, sleepy).delay(7)
        await eventually(lambda: _ran(app, ("start", 7)))
        assert await server.revoke(running.task_uuid, terminate=True) is True
        with pytest.raises(TaskRevokedError) as caught:
            await running.get(timeout=20)
        assert "revoked" in caught.value.error
        after = await server.send_task(add_sig(server, 3))
        assert await after.get(timeout=30) == 3
        state = await eventually(_final_error(running), timeout=20)
    assert state == TERMINATED
    assert ("end", 7) not in app.ran


async def test_terminate_discards_a_plain_functions_result(app: App) -> None:
    server = app.server
    from machinery_aio.tasks import Task

    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        running = await Task(server.publisher, server.registry["blocking"]).delay(5)
        await eventually(lambda: _ran(app, ("start", 5)))
        await server.revoke(running.task_uuid, terminate=True)
        await eventually(lambda: _ran(app, ("end", 5)))  # its thread cannot be stopped
        after = await server.send_task(add_sig(server, 4))
        assert await after.get(timeout=30) == 4
        with pytest.raises(TaskRevokedError):
            await running.get(timeout=20)


async def test_a_worker_started_later_knows_earlier_revocations(app: App) -> None:
    server = app.server
    result = await server.send_task(add_sig(server, 1, countdown=2))
    await result.revoke()
    async with server.new_worker("first", concurrency=2, run_scheduler=False):
        pass  # a worker that ran and stopped before the task was due
    restarted = app.another()
    worker = restarted.new_worker("restarted", concurrency=2, run_scheduler=False)
    async with worker:
        # The restarted worker learns it from the control channel, not from the state.
        await eventually(lambda: _known(worker.revocations.check(result.task_uuid)))
        later = await restarted.send_task(add_sig(restarted, 2, countdown=3))
        assert await later.get(timeout=30) == 2
    assert app.ran == [2]
    assert (await result.get_state()).error == REVOKED


async def test_revoking_a_chord_member_fails_the_chord_once(app: App) -> None:
    server = app.server
    members = [add_sig(server, n, countdown=1) for n in (1, 2, 3)]
    callback = server.registry["collect"]
    from machinery_aio.tasks import Task

    chord = Chord(Group(*members), Task(server.publisher, callback).signature())
    result = await server.send_chord(chord)
    await result.group_results[1].revoke()
    async with server.new_worker("w", concurrency=3, run_scheduler=False):
        with pytest.raises(TaskFailedError) as caught:
            await result.callback.get(timeout=30)
    assert "revoked" in caught.value.error
    assert sorted(n for n in app.ran if isinstance(n, int)) == [1, 3]
    assert not [r for r in app.ran if isinstance(r, tuple) and r[0] == "collect"]


async def test_revoking_a_chain_stops_it(app: App) -> None:
    server = app.server
    links = [add_sig(server, 1, countdown=1), add_sig(server, 2), add_sig(server, 3)]
    chain = await server.send_chain(Chain(*links))
    await chain.results[0].revoke()
    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        with pytest.raises(TaskRevokedError):
            await chain.get(timeout=30)
        marker = await server.send_task(add_sig(server, 9))
        assert await marker.get(timeout=30) == 9
    assert app.ran == [9]


async def test_a_finished_task_is_not_revoked_and_bad_uuids_are_refused(app: App) -> None:
    server = app.server
    async with server.new_worker("w", concurrency=2, run_scheduler=False):
        done = await server.send_task(add_sig(server, 1))
        assert await done.get(timeout=30) == 1
    assert await done.revoke() is False
    assert await done.get(timeout=5) == 1
    with pytest.raises(ValueError, match="task UUID"):
        await server.revoke("")


async def _ran(app: App, item: Any) -> bool:
    return item in app.ran


async def _known(value: bool | None) -> bool:
    return value is True


def _final_error(result: Any) -> Callable[[], Awaitable[str | None]]:
    async def read() -> str | None:
        state = await result.get_state()
        return state.error if state.state is State.FAILURE else None

    return read


class ChannelLessBackend(MemoryBackend):
    """A backend without a control channel: what a new driver gets without writing code."""

    def control_channel(self) -> None:
        return None


async def test_without_a_control_channel_workers_read_the_states(unique: str) -> None:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}")
    server = Server(config, backend=ChannelLessBackend(config))
    ran: list[Any] = []
    register(server, ran)
    from machinery_aio.tasks import Task

    try:
        pending = await server.send_task(add_sig(server, 1))
        await pending.revoke()
        async with server.new_worker("w", concurrency=2, run_scheduler=False) as worker:
            assert worker.revocations.check(pending.task_uuid) is None  # only the state can tell
            running = await Task(server.publisher, server.registry["sleepy"]).delay(2)
            await eventually(lambda: _ran_in(ran, ("start", 2)))
            await running.revoke(terminate=True)
            after = await server.send_task(add_sig(server, 3))
            assert await after.get(timeout=30) == 3
            assert await eventually(_final_error(running), timeout=20) == TERMINATED
            with pytest.raises(TaskRevokedError):
                await pending.get(timeout=5)
        assert 1 not in ran
        assert ("end", 2) not in ran
    finally:
        await server.close()


async def _ran_in(ran: list[Any], item: Any) -> bool:
    return item in ran


def test_expired_revocations_are_forgotten_and_bad_messages_refused() -> None:
    revocations = Revocations(MemoryBackend(Config()), {})
    now = time.time()
    revocations.add(Revocation("task_old", False, now - 1))  # expired with the results
    revocations.add(Revocation("task_new", False, now + 60))
    revocations._ready(True)
    assert revocations.check("task_old") is False
    assert revocations.check("task_new") is True
    assert Revocation.from_json(Revocation("task_a", True, now).to_json()) == Revocation("task_a", True, now)
    for bad in (b"not json", b"[]", b'{"uuid": "x"}', b'{"uuid": "x", "terminate": true, "expires": "soon"}'):
        with pytest.raises(ValueError, match="not a revocation"):
            Revocation.from_json(bad)
