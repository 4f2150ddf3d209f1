"""The worker: the fetch loop, the concurrency bound, hand-backs of unregistered tasks, broker and
backend errors, and stopping (quit, grace period, abort, real signals in a real process).

What happens to one message once fetched (states, retries, callbacks ...) is in test_runner.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

import pytest

from machinery_aio import Arg, Config, Server, Signature, State, TaskContext, TaskState, Worker
from machinery_aio.drivers.broker import Consumer, Delivery
from tests.support.engine import (  # noqa: F401 - config_fixture and server_fixture are fixtures
    config_fixture,
    ints,
    pending_count,
    server_fixture,
    until,
)
from tests.support.processes import StartCLI
from tests.support.recording import RecordingBackend, RecordingBroker

# -- the queue and the concurrency bound ---------------------------------------------------------


async def test_custom_queue_worker_consumes_only_its_queue(server: Server) -> None:
    @server.task("where")
    async def where(ctx: TaskContext) -> str:
        return ctx.signature.routing_key

    special = await where.with_options(routing_key="special").delay()
    default = await where.delay()
    async with server.new_custom_queue_worker("w", 1, "special"):
        assert await special.get(timeout=30) == "special"
    assert [p.uuid for p in await server.broker.get_pending_tasks()] == [default.task_uuid]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_concurrency_bounds_running_tasks(server: Server, concurrency: int) -> None:
    gate = asyncio.Event()
    running = peak = 0
    order: list[int] = []

    @server.task("gated")
    async def gated(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        order.append(i)
        await gate.wait()
        running -= 1
        return i

    total = 2 * concurrency + 2
    results = await server.send_tasks([gated.signature(i) for i in range(total)])
    async with server.new_worker("w", concurrency=concurrency) as worker:
        await until(lambda: running == concurrency)
        assert worker.running_tasks == concurrency
        assert await pending_count(server) == total - concurrency  # nothing more was fetched
        gate.set()
        assert [await r.get(timeout=30) for r in results] == list(range(total))
    assert peak == concurrency
    if concurrency == 1:
        assert order == list(range(total))  # one by one, in queue order


async def test_concurrency_zero_is_unlimited(server: Server) -> None:
    gate = asyncio.Event()
    running = 0

    @server.task("gated")
    async def gated(i: int) -> int:
        nonlocal running
        running += 1
        await gate.wait()
        return i

    results = await server.send_tasks([gated.signature(i) for i in range(40)])
    async with server.new_worker("w", concurrency=0) as worker:
        await until(lambda: running == 40)
        assert worker.running_tasks == 40
        gate.set()
        assert [await r.get(timeout=30) for r in results] == list(range(40))


# -- unregistered tasks -------------------------------------------------------------------------------


class CountingConsumer(Consumer):
    """Delegates to a real consumer and notes when messages are handed back."""

    def __init__(self, inner: Consumer, requeues: list[tuple[float, float]]) -> None:
        self.inner = inner
        self.requeues = requeues

    async def fetch(self, max_count: int) -> list[Delivery]:
        return await self.inner.fetch(max_count)

    async def ack(self, delivery: Delivery) -> None:
        await self.inner.ack(delivery)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        self.requeues.append((time.monotonic(), delay))
        await self.inner.requeue(delivery, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self.inner.dead_letter(delivery, reason)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        await self.inner.release(deliveries)

    async def close(self) -> None:
        await self.inner.close()


class CountingBroker(RecordingBroker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requeues: list[tuple[float, float]] = []

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return CountingConsumer(super().consumer(queue, prefetch=prefetch, tag=tag), self.requeues)


async def test_unregistered_task_is_handed_back_with_growing_back_off(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    broker = CountingBroker(config)
    server = Server(config, broker=broker, backend=RecordingBackend(config))
    with caplog.at_level(logging.WARNING, "machinery_aio.worker"):
        async with server, server.new_worker("w", unregistered_backoff=(0.02, 0.08)):
            result = await server.send_task(Signature(name="later_known", args=ints(5)))
            await until(lambda: len(broker.requeues) >= 4)
            assert (await result.get_state()).state is State.PENDING  # never received
            server.register_task("later_known", lambda x: x * 2)
            assert await result.get(timeout=30) == 10  # nothing was lost
    assert [delay for _, delay in broker.requeues[:4]] == [0.02, 0.04, 0.08, 0.08]
    moments = [at for at, _ in broker.requeues]
    gaps = [b - a for a, b in itertools.pairwise(moments)]
    assert all(gap >= 0.9 * delay for gap, (_, delay) in zip(gaps, broker.requeues, strict=False))  # honoured
    assert caplog.text.count("is not registered on worker w") == 1  # logged once, not per hand-back


async def test_a_handed_back_task_takes_no_run_slot_and_is_held_by_the_broker(server: Server) -> None:
    @server.task("known")
    async def known() -> str:
        return "ran"

    unknown = await server.send_task(Signature(name="nobody_knows"))
    worker = server.new_worker("w", concurrency=1, unregistered_backoff=(60.0, 60.0), grace_period=60)
    async with asyncio.timeout(20):
        async with worker:
            await until(lambda: _held(server, unknown.task_uuid))
            assert worker.running_tasks == 0  # the worker does not keep it
            assert await (await known.delay()).get(timeout=30) == "ran"  # its one slot is free
    assert await _held(server, unknown.task_uuid)  # still there after the worker stopped: not lost
    assert await server.broker.get_pending_tasks() == []
    assert (await unknown.get_state()).state is State.PENDING


async def test_a_handed_back_task_runs_once_a_worker_knows_it(server: Server) -> None:
    unknown = await server.send_task(Signature(name="learned", args=ints(4)))
    async with server.new_worker("w1", unregistered_backoff=(0.05, 0.05)):
        await until(lambda: _held(server, unknown.task_uuid))
    server.register_task("learned", lambda x: x + 1)
    async with server.new_worker("w2"):
        assert await unknown.get(timeout=30) == 5


async def _held(server: Server, uuid: str) -> bool:
    return uuid in {s.uuid for s in await server.broker.get_held_tasks()}


# -- broker and backend errors ---------------------------------------------------------------------


class FlakyFetchBroker(RecordingBroker):
    """The first fetch fails, as a broker connection that drops once."""

    failures = 1

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        inner = super().consumer(queue, prefetch=prefetch, tag=tag)
        broker = self

        class Flaky(CountingConsumer):
            async def fetch(self, max_count: int) -> list[Delivery]:
                if broker.failures:
                    broker.failures -= 1
                    raise ConnectionError("connection reset by peer")
                return await super().fetch(max_count)

        return Flaky(inner, [])


async def test_broker_errors_are_reported_and_survived(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(config, broker=FlakyFetchBroker(config))
    server.register_task("echo", lambda x: x)
    reported: list[tuple[str, Signature | None]] = []
    worker = server.new_worker("w")
    worker.set_error_handler(lambda exc, sig: reported.append((str(exc), sig)))
    with caplog.at_level(logging.ERROR, "machinery_aio.worker"):
        async with server, worker:
            result = await server.send_task(Signature(name="echo", args=[Arg.of("hi")]))
            assert await result.get(timeout=30) == "hi"
    assert reported == [("connection reset by peer", None)]
    assert "fetching from memory://" in caplog.text
    assert "failed: connection reset by peer; retrying in" in caplog.text


class FailingAckBroker(RecordingBroker):
    """Every ack fails, as a broker connection that drops between fetch and ack."""

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        class FailingAck(CountingConsumer):
            async def ack(self, delivery: Delivery) -> None:
                raise ConnectionError("ack lost")

        return FailingAck(super().consumer(queue, prefetch=prefetch, tag=tag), [])


async def test_a_failed_ack_is_reported_and_the_message_comes_back(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []
    server = Server(config, broker=FailingAckBroker(config))
    server.register_task("note", lambda x: runs.append(x))
    reported: list[tuple[str, Signature | None]] = []
    worker = server.new_worker("w")
    worker.set_error_handler(lambda exc, sig: reported.append((str(exc), sig)))
    with caplog.at_level(logging.ERROR, "machinery_aio.worker"):
        async with server, worker:
            result = await server.send_task(Signature(name="note", args=[Arg.of(1)]))
            await result.get(timeout=30)
            await until(lambda: bool(reported) and worker.running_tasks == 0)
    assert reported[0] == ("ack lost", None)
    assert "broker operation failed: ack lost; the message will be redelivered" in caplog.text
    # never acked: the broker gives it back (at least once), here when the consumer closes
    assert [s.uuid for s in await server.broker.get_pending_tasks()] == [result.task_uuid]
    assert runs == [1]


class FlakyBackend(RecordingBackend):
    """Fails the first RECEIVED write, as a result store that drops once."""

    failures = 1

    async def set_states(self, states: Sequence[TaskState]) -> None:
        if self.failures and any(s.state is State.RECEIVED for s in states):
            self.failures -= 1
            raise ConnectionError("backend unavailable")
        await super().set_states(states)


async def test_a_backend_error_hands_the_message_back(config: Config) -> None:
    backend = FlakyBackend(config)
    server = Server(config, backend=backend)
    server.register_task("echo", lambda x: x)
    async with server, server.new_worker("w"):
        result = await server.send_task(Signature(name="echo", args=[Arg.of(5)]))
        assert await result.get(timeout=30) == 5
    assert backend.failures == 0  # it did fail once
    assert backend.states_of(result.task_uuid) == [
        State.PENDING,
        State.RECEIVED,
        State.STARTED,
        State.SUCCESS,
    ]
    assert await server.broker.get_dead_letters() == []


# -- stopping ------------------------------------------------------------------------------------------


async def test_quit_finishes_running_tasks_and_fetches_nothing_more(server: Server) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    @server.task("gated")
    async def gated() -> str:
        started.set()
        await gate.wait()
        return "finished"

    worker = server.new_worker("w", grace_period=60)
    await worker.start()
    running = await gated.delay()
    await started.wait()
    worker.quit()
    worker.quit()  # idempotent
    await asyncio.sleep(0.01)
    waiting = await gated.delay()  # sent while stopping: stays queued
    gate.set()
    async with asyncio.timeout(20):
        await worker.wait_stopped()
    assert await running.get(timeout=1) == "finished"
    assert [p.uuid for p in await server.broker.get_pending_tasks()] == [waiting.task_uuid]


async def test_tasks_past_the_grace_period_are_cancelled_and_redelivered(server: Server) -> None:
    @server.task("endless")
    async def endless() -> None:
        await asyncio.sleep(60)

    worker = server.new_worker("w", grace_period=0.05)
    async with asyncio.timeout(20):
        async with worker:
            result = await endless.delay()
            await until(lambda: worker.running_tasks == 1)
    assert [p.uuid for p in await server.broker.get_pending_tasks()] == [result.task_uuid]
    assert (await result.get_state()).state is State.STARTED


async def test_abort_after_quit_stops_at_once(server: Server) -> None:
    @server.task("endless")
    async def endless(i: int) -> None:
        await asyncio.sleep(60)

    worker = server.new_worker("w", grace_period=60)
    launched = asyncio.create_task(worker.launch())
    results = [await endless.delay(i) for i in range(2)]
    await until(lambda: worker.running_tasks == 2)
    worker.quit()
    await asyncio.sleep(0.01)
    assert not launched.done()  # waiting for its tasks within the grace period
    worker.abort()
    async with asyncio.timeout(20):
        await launched
    pending = {p.uuid for p in await server.broker.get_pending_tasks()}
    assert pending == {r.task_uuid for r in results}


async def test_embedded_worker_leaves_signal_handlers_alone(server: Server) -> None:
    @server.task("t")
    async def t() -> int:
        return 1

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with server.new_worker("w"):
        assert await (await t.delay()).get(timeout=30) == 1
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


async def test_launch_runs_until_quit(server: Server) -> None:
    @server.task("t")
    async def t() -> int:
        return 1

    worker = server.new_worker("w")
    launched = asyncio.create_task(worker.launch())
    assert await (await t.delay()).get(timeout=30) == 1
    worker.quit()
    async with asyncio.timeout(20):
        await launched
    assert await server.broker.get_pending_tasks() == []


async def test_no_unix_signals_launch(unique: str) -> None:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", no_unix_signals=True)
    server = Server(config)
    worker = server.new_worker("w")
    before = signal.getsignal(signal.SIGTERM)
    launched = asyncio.create_task(worker.launch())
    await asyncio.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == before
    worker.quit()
    async with asyncio.timeout(20):
        await launched
    await server.close()


def test_worker_reprs_and_arguments(server: Server) -> None:
    parts = (server.broker, server.backend, server.publisher, server.registry)
    worker = Worker(*parts, "tag", 3, "q")
    assert repr(worker) == "<Worker tag queue='q' concurrency=3>"
    assert Worker(*parts).queue == server.config.default_queue
    assert Worker(*parts).tag.startswith("worker-")
    with pytest.raises(ValueError, match="concurrency must be 0"):
        Worker(*parts, concurrency=-1)
    with pytest.raises(ValueError, match="grace_period must not be negative"):
        Worker(*parts, grace_period=-1)


# -- launch() in a real process with real signals ---------------------------------------------------


APP = ("worker", "-A", "tests.apps.memory_app:server", "--loglevel", "INFO")


@pytest.mark.parametrize(
    ("signum", "loop"),
    [(signal.SIGTERM, "--uvloop"), (signal.SIGINT, "--uvloop"), (signal.SIGTERM, "--no-uvloop")],
)
def test_a_signal_stops_gracefully_letting_the_running_task_finish(
    cli_process: StartCLI, signum: int, loop: str
) -> None:
    process = cli_process(*APP, loop, env={"MEMORY_APP_SEED": "sleep:0.5"})
    process.wait_for("started sleep")
    process.proc.send_signal(signum)
    assert process.finish() == 0, process.stderr
    assert "finished sleep" in process.out
    assert f"{signal.Signals(signum).name}: stopping gracefully" in process.stderr
    assert "machinery-aio" in process.stderr
    assert "memory://memory-app" in process.stderr


def test_a_second_signal_stops_at_once(cli_process: StartCLI) -> None:
    process = cli_process(*APP, "--grace-period", "600", env={"MEMORY_APP_SEED": "sleep:600"})
    process.wait_for("started sleep")
    process.proc.send_signal(signal.SIGTERM)
    process.wait_for("stopping gracefully")
    time.sleep(0.1)
    assert process.proc.poll() is None  # still waiting for the running task
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0, process.stderr
    assert "finished sleep" not in process.out
    assert "second SIGTERM: stopping at once; unfinished tasks will be redelivered" in process.stderr


def test_grace_period_runs_out(cli_process: StartCLI) -> None:
    process = cli_process(*APP, "--grace-period", "0.2", env={"MEMORY_APP_SEED": "sleep:600"})
    process.wait_for("started sleep")
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0, process.stderr
    assert "waiting up to 0.2 s for 1 running tasks" in process.stderr
    assert "cancelling 1 unfinished tasks" in process.stderr
    assert "finished sleep" not in process.out
