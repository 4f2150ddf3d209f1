"""The worker: bounded concurrency, states, retries, ETAs, workflows, hooks, limits, bad input, stopping."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

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
    TaskContext,
    TaskFailedError,
    TaskTimeLimitExceeded,
    Worker,
)
from machinery_aio.drivers.broker import Consumer, Delivery
from machinery_aio.gotime import unix_nanos
from machinery_aio.retry import fibonacci_next
from tests.support.processes import StartCLI
from tests.support.recording import RecordingBackend, RecordingBroker, push_raw

P, R, S = State.PENDING, State.RECEIVED, State.STARTED
CLOCK_SLACK = timedelta(milliseconds=1)
"""Clock granularity allowed when comparing wall-clock times (not a timing threshold)."""


@pytest.fixture
def config(unique: str) -> Config:
    return Config(
        broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=f"{unique}_q"
    )


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    srv = Server(config, broker=RecordingBroker(config), backend=RecordingBackend(config))
    yield srv
    await srv.close()


def backend_of(server: Server) -> RecordingBackend:
    assert isinstance(server.backend, RecordingBackend)
    return server.backend


def broker_of(server: Server) -> RecordingBroker:
    assert isinstance(server.broker, RecordingBroker)
    return server.broker


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until ``predicate`` holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.005)


def ints(*values: int) -> list[Arg]:
    return [Arg(type="int64", value=v) for v in values]


async def _in_state(getting: Awaitable[Any], state: State) -> bool:
    return (await getting).state is state


async def pending_count(server: Server) -> int:
    return len(await server.broker.get_pending_tasks())


# -- running tasks ----------------------------------------------------------------------------------


async def test_async_and_sync_tasks_run_and_return(server: Server) -> None:
    threads: list[int] = []

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task("multiply")
    def multiply(a: int, b: int) -> int:
        threads.append(threading.get_ident())
        return a * b

    async with server.new_worker("w", concurrency=2):
        assert await (await add.delay(1, 2)).get(timeout=30) == 3
        assert await (await multiply.delay(3, 4)).get(timeout=30) == 12
    assert threads
    assert threads[0] != threading.get_ident()


async def test_sync_tasks_do_not_block_the_event_loop(server: Server) -> None:
    gate = threading.Event()

    @server.task("blocking")
    def blocking() -> bool:
        return gate.wait(30)

    @server.task("opener")
    async def opener() -> None:
        gate.set()

    async with server.new_worker("w", concurrency=2):
        blocked = await blocking.delay()
        await until(lambda: _in_state(blocked.get_state(), State.STARTED))
        opened = await opener.delay()
        assert await opened.get(timeout=30) is None
        assert await blocked.get(timeout=30) is True


async def test_a_custom_executor_runs_sync_tasks(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    names: list[str] = []

    @server.task("where")
    def where() -> str:
        names.append(threading.current_thread().name)
        return "ok"

    executor = ThreadPoolExecutor(1, thread_name_prefix="custom-pool")
    try:
        async with server.new_worker("w", executor=executor):
            assert await (await where.delay()).get(timeout=30) == "ok"
        assert names[0].startswith("custom-pool")
        assert executor.submit(lambda: 1).result() == 1  # not shut down by the worker
    finally:
        executor.shutdown()


async def test_several_results_and_none(server: Server) -> None:
    @server.task("pair")
    async def pair(a: int) -> tuple[int, str]:
        return a, str(a)

    @server.task("nothing")
    def nothing() -> None:
        return None

    async with server.new_worker("w"):
        result = await pair.delay(7)
        assert await result.get(timeout=30) == (7, "7")
        state = await result.get_state()
        assert [(r.type, r.value) for r in state.results or ()] == [("int64", 7), ("string", "7")]
        empty = await nothing.delay()
        assert await empty.get(timeout=30) is None
        assert (await empty.get_state()).results == []


async def test_sys_exit_and_unsendable_results_fail_the_task_not_the_worker(server: Server) -> None:
    @server.task("exits")
    def exits() -> None:
        sys.exit(4)

    @server.task("exits_async")
    async def exits_async() -> None:
        raise SystemExit("bye")

    @server.task("unsendable")
    async def unsendable() -> object:
        return object()

    @server.task("nan")
    async def nan() -> float:
        return float("nan")

    @server.task("ok")
    async def ok() -> str:
        return "still here"

    async with server.new_worker("w"):
        for handle, error in [
            (exits, "SystemExit: 4"),
            (exits_async, "SystemExit: bye"),
            (unsendable, "object value cannot be sent as JSON"),
            (nan, "JSON has no NaN or infinity"),
        ]:
            with pytest.raises(TaskFailedError) as info:
                await (await handle.delay()).get(timeout=30)
            assert error in info.value.error
        assert await (await ok.delay()).get(timeout=30) == "still here"


async def test_custom_queue_worker_consumes_only_its_queue(server: Server) -> None:
    @server.task("where")
    async def where(ctx: TaskContext) -> str:
        return ctx.signature.routing_key

    special = await where.with_options(routing_key="special").delay()
    default = await where.delay()
    async with server.new_custom_queue_worker("w", 1, "special"):
        assert await special.get(timeout=30) == "special"
    assert [p.uuid for p in await server.broker.get_pending_tasks()] == [default.task_uuid]


# -- concurrency --------------------------------------------------------------------------------------


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


# -- TaskContext ----------------------------------------------------------------------------------------


async def test_task_context_is_passed_first(server: Server) -> None:
    seen: dict[str, Any] = {}

    @server.task("ctx")
    async def with_ctx(ctx: TaskContext, x: int) -> int:
        seen.update(
            uuid=ctx.task_uuid,
            name=ctx.task_name,
            retries=ctx.retry_count,
            headers=ctx.headers,
            tag=ctx.worker_tag,
            sig=ctx.signature,
        )
        ctx.logger.info("running %s", x)
        assert isinstance(ctx.retry_later("again", 2), RetryTaskLater)
        return x * 2

    @server.task("ctx_sync")
    def sync_ctx(ctx: TaskContext) -> str:
        return ctx.task_name

    async with server.new_worker("ctx-worker") as worker:
        result = await with_ctx.with_options(retry_count=4, headers={"h": "v"}).delay(21)
        assert await result.get(timeout=30) == 42
        assert await (await sync_ctx.delay()).get(timeout=30) == "ctx_sync"
    assert seen["uuid"] == result.task_uuid
    assert seen["name"] == "ctx"
    assert seen["retries"] == 4
    assert seen["headers"] == {"h": "v"}
    assert seen["tag"] == worker.tag == "ctx-worker"
    assert isinstance(seen["sig"], Signature)


# -- states ------------------------------------------------------------------------------------------------


async def test_states_are_recorded_in_order(server: Server) -> None:
    @server.task("ok")
    async def ok() -> str:
        return "fine"

    @server.task("bad")
    async def bad() -> None:
        raise ValueError("bad input")

    async with server.new_worker("w"):
        good = await ok.delay()
        assert await good.get(timeout=30) == "fine"
        failed = await bad.delay()
        with pytest.raises(TaskFailedError) as info:
            await failed.get(timeout=30)
    assert info.value.error == "ValueError: bad input"
    backend = backend_of(server)
    assert backend.states_of(good.task_uuid) == [P, R, S, State.SUCCESS]
    assert backend.states_of(failed.task_uuid) == [P, R, S, State.FAILURE]
    final = await failed.get_state()
    assert final.task_name == "bad"
    assert final.created_at.year > 1


# -- retries ------------------------------------------------------------------------------------------------


def test_fibonacci_next_is_gos() -> None:
    assert [fibonacci_next(n) for n in (0, 1, 2, 3, 5, 8, 10, 13)] == [1, 2, 3, 5, 8, 13, 13, 21]


async def test_retry_count_republishes_with_the_same_uuid_after_fibonacci_seconds(server: Server) -> None:
    attempts: dict[str, int] = {}
    failed_at: list[float] = []
    errors: list[tuple[BaseException, Signature | None]] = []

    @server.task("flaky")
    async def flaky(key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if key == "never" or attempts[key] == 1:
            failed_at.append(time.time())
            raise ConnectionError(f"attempt {attempts[key]}")
        return f"{key} ok after {attempts[key]}"

    worker = server.new_worker("w", concurrency=2)
    worker.set_error_handler(lambda exc, sig: errors.append((exc, sig)))
    async with worker:
        recovers = await flaky.with_options(retry_count=2).delay("recovers")
        gives_up = await flaky.with_options(retry_count=1).delay("never")
        assert await recovers.get(timeout=30) == "recovers ok after 2"
        with pytest.raises(TaskFailedError, match="ConnectionError: attempt 2"):
            await gives_up.get(timeout=30)
    backend = backend_of(server)
    assert backend.states_of(recovers.task_uuid) == [P, R, S, State.RETRY, R, S, State.SUCCESS]
    assert backend.states_of(gives_up.task_uuid) == [P, R, S, State.RETRY, R, S, State.FAILURE]
    retried = [s for s in broker_of(server).published() if s.uuid == recovers.task_uuid]
    assert len(retried) == 2
    again = retried[1]
    assert (again.retry_count, again.retry_timeout) == (1, 1)
    assert again.eta is not None
    first_failure = min(failed_at)
    assert unix_nanos(again.eta) / 1e9 >= first_failure + 1 - 0.01
    # the error handler hears only of final failures, not of retries
    assert [(type(e).__name__, s.uuid if s else None) for e, s in errors] == [
        ("ConnectionError", gives_up.task_uuid)
    ]


@pytest.mark.parametrize(("start", "expected"), [(0, 1), (1, 2), (2, 3), (3, 5), (5, 8), (8, 13), (10, 13)])
async def test_retry_timeout_grows_by_fibonacci(server: Server, start: int, expected: int) -> None:
    @server.task("always")
    async def always() -> None:
        raise RuntimeError("no")

    sig = always.with_options(retry_count=5, retry_timeout=start).signature()
    async with server.new_worker("w"):
        before = time.time()
        result = await server.send_task(sig)
        await until(lambda: backend_of(server).states_of(result.task_uuid)[-1:] == [State.RETRY])
        after = time.time()
    [delayed] = await server.broker.get_delayed_tasks()
    assert delayed.uuid == result.task_uuid
    assert (delayed.retry_count, delayed.retry_timeout) == (4, expected)
    assert delayed.eta is not None
    eta = unix_nanos(delayed.eta) / 1e9
    assert before + expected - 0.01 <= eta <= after + expected + 0.01
    assert (await result.get_state()).state is State.RETRY  # no PENDING is written for a retry


async def test_retry_task_later_does_not_use_up_retry_count(server: Server) -> None:
    attempts = 0

    @server.task("later")
    async def later(ctx: TaskContext) -> int:
        nonlocal attempts
        attempts += 1
        assert ctx.retry_count == 0
        if attempts < 3:
            raise RetryTaskLater("not yet", 0.02)
        return attempts

    async with server.new_worker("w"):
        result = await later.delay()
        assert await result.get(timeout=30) == 3
    assert backend_of(server).states_of(result.task_uuid) == [
        P,
        R,
        S,
        State.RETRY,
        R,
        S,
        State.RETRY,
        R,
        S,
        State.SUCCESS,
    ]
    assert [s.uuid for s in broker_of(server).published()] == [result.task_uuid] * 3


def test_retry_task_later_text_and_validation() -> None:
    exc = RetryTaskLater("not yet", 1.5)
    assert str(exc) == "Task error: not yet Will retry in: 1.5s"
    assert (exc.msg, exc.delay) == ("not yet", 1.5)
    with pytest.raises(ValueError, match="must not be negative"):
        RetryTaskLater("x", -1)


# -- ETA ----------------------------------------------------------------------------------------------------


async def test_eta_is_honoured(server: Server) -> None:
    started: list[datetime] = []

    @server.task("when")
    async def when() -> None:
        started.append(datetime.now(UTC))

    async with server.new_worker("w"):
        result = await when.with_options(countdown=0.3).delay()
        sent = result.signature.eta
        await result.get(timeout=30)
    assert sent is not None
    assert started[0] >= sent - CLOCK_SLACK


@pytest.mark.parametrize("early", [0.3, 1.5])
async def test_a_message_that_arrives_before_its_eta_waits_for_it(server: Server, early: float) -> None:
    """A foreign producer may push a future-ETA task straight onto the queue (Go's consumers
    never check ETAs); the worker must still not run it early."""
    started: list[datetime] = []

    @server.task("when")
    async def when() -> None:
        started.append(datetime.now(UTC))

    sig = Signature(
        uuid="task_early",
        name="when",
        routing_key=server.config.default_queue,
        eta=datetime.now(UTC) + timedelta(seconds=early),
        headers={},
    )
    await server.backend.set_state_pending(sig)
    async with server.new_worker("w"):
        await push_raw(server.broker, server.config.default_queue, sig.to_json())  # type: ignore[arg-type]
        if early > 1:  # handed to the broker's delay instead of held by the worker
            await until(lambda: _delayed_has(server, sig.uuid))
            assert State.RECEIVED not in backend_of(server).states_of(sig.uuid)
        await server.get_async_result(sig.uuid).get(timeout=30)
    assert sig.eta is not None
    assert started[0] >= sig.eta - CLOCK_SLACK


async def _delayed_has(server: Server, uuid: str) -> bool:
    return any(s.uuid == uuid for s in await server.broker.get_delayed_tasks())


# -- workflows ----------------------------------------------------------------------------------------------


def register_math(server: Server, calls: dict[str, list[list[Any]]]) -> None:
    async def add(*values: int) -> int:
        calls.setdefault("add", []).append(list(values))
        return sum(values)

    async def multiply(*values: int) -> int:
        calls.setdefault("multiply", []).append(list(values))
        product = 1
        for v in values:
            product *= v
        return product

    async def collect(*values: Any) -> list[Any]:
        calls.setdefault("collect", []).append(list(values))
        return list(values)

    async def fail(message: str) -> None:
        raise ValueError(message)

    server.register_tasks({"add": add, "multiply": multiply, "collect": collect, "fail": fail})


def task(name: str, *values: int, **fields: Any) -> Signature:
    return Signature(name=name, args=ints(*values), **fields)


async def test_chain_passes_results_along(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    async with server.new_worker("w"):
        chain = await server.send_chain(Chain(task("add", 1, 1), task("add", 5, 5), task("multiply", 4)))
        assert await chain.get(timeout=30) == 48
    assert calls["add"] == [[1, 1], [5, 5, 2]]
    assert calls["multiply"] == [[4, 12]]
    states = await chain.get_states()
    assert [s.state for s in states] == [State.SUCCESS] * 3


async def test_on_success_immutability_is_the_parents(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    async with server.new_worker("w"):
        # an immutable parent passes nothing on
        first = await server.send_chain(Chain(task("add", 1, 2, immutable=True), task("multiply", 10)))
        assert await first.get(timeout=30) == 10
        # Go checks the parent, not the callback: an immutable callback still gets the results
        second = await server.send_chain(Chain(task("add", 2, 2), task("collect", 7, immutable=True)))
        assert await second.get(timeout=30) == [7, 4]


async def test_chord_callback_gets_every_result_in_group_order(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)

    @server.task("slow_add")
    async def slow_add(a: int, delay_ms: int) -> int:
        await asyncio.sleep(delay_ms / 1000)
        return a

    members = [slow_add.signature(i, 30 - 5 * i) for i in range(5)]  # later members finish first
    async with server.new_worker("w", concurrency=0):
        chord = await server.send_chord(Chord(Group(*members), task("collect", 100)))
        assert await chord.get(timeout=30) == [100, 0, 1, 2, 3, 4]


async def test_chord_immutability_is_the_callbacks(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    async with server.new_worker("w", concurrency=0):
        # immutable members do not matter for a chord ...
        mutable_cb = await server.send_chord(
            Chord(Group(task("add", 1, immutable=True), task("add", 2, immutable=True)), task("collect"))
        )
        assert await mutable_cb.get(timeout=30) == [1, 2]
        # ... the callback's own Immutable does
        immutable_cb = await server.send_chord(
            Chord(Group(task("add", 1), task("add", 2)), task("collect", 9, immutable=True))
        )
        assert await immutable_cb.get(timeout=30) == [9]


async def test_chord_fires_exactly_once_with_many_members(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    count = 60
    async with server.new_worker("w", concurrency=0) as worker:
        chord = await server.send_chord(
            Chord(Group(*(task("add", i) for i in range(count))), task("collect"))
        )
        assert await chord.get(timeout=30) == list(range(count))
        await until(lambda: worker.running_tasks == 0)
        assert await pending_count(server) == 0
    assert len(calls["collect"]) == 1
    callback_sends = [s for s in broker_of(server).published() if s.name == "collect"]
    assert len(callback_sends) == 1


async def test_chord_member_failure_fails_the_callback_with_a_clear_error(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    callback = task("collect", on_error=[task("collect", 5)])
    async with server.new_worker("w", concurrency=0) as worker:
        chord = await server.send_chord(
            Chord(
                Group(task("add", 1), Signature(name="fail", args=[Arg.of("member broke")]), task("add", 3)),
                callback,
            )
        )
        with pytest.raises(TaskFailedError, match="member broke"):
            await chord.get(timeout=30)
        with pytest.raises(TaskFailedError) as info:
            await chord.callback.get(timeout=30)
        await until(lambda: len(calls.get("collect", [])) == 1 and worker.running_tasks == 0)
    assert "1 of 3 members failed" in info.value.error
    assert "ValueError: member broke" in info.value.error
    # the callback itself never ran; its OnError callback got the error text prepended
    [on_error_args] = calls["collect"]
    assert on_error_args[1:] == [5]
    assert "1 of 3 members failed" in on_error_args[0]


async def test_on_error_gets_the_error_text_prepended(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    async with server.new_worker("w"):
        sig = Signature(
            name="fail",
            args=[Arg.of("it broke")],
            on_error=[task("collect", 7, 8)],
            on_success=[task("collect", 1)],
        )
        result = await server.send_task(sig)
        with pytest.raises(TaskFailedError):
            await result.get(timeout=30)
        await until(lambda: "collect" in calls)
    assert calls["collect"] == [["ValueError: it broke", 7, 8]]


# -- hooks -------------------------------------------------------------------------------------------------


async def test_pre_and_post_task_hooks_wrap_the_task(server: Server) -> None:
    events: list[str] = []

    @server.task("work")
    async def work() -> None:
        events.append("task")

    async def post(sig: Signature) -> None:
        await asyncio.sleep(0)
        events.append(f"post:{sig.name}")

    worker = server.new_worker("w")
    worker.set_pre_task_handler(lambda sig: events.append(f"pre:{sig.name}"))
    worker.set_post_task_handler(post)
    async with worker:
        await (await work.delay()).get(timeout=30)
        await until(lambda: len(events) == 3)
    assert events == ["pre:work", "task", "post:work"]


async def test_failing_hooks_and_handlers_do_not_break_the_task(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    @server.task("ok")
    async def ok() -> str:
        return "done"

    @server.task("bad")
    async def bad() -> None:
        raise KeyError("x")

    def broken(*_: Any) -> None:
        raise RuntimeError("hook broke")

    worker = server.new_worker("w")
    worker.set_pre_task_handler(broken)
    worker.set_post_task_handler(broken)
    worker.set_error_handler(broken)
    with caplog.at_level(logging.ERROR):
        async with worker:
            assert await (await ok.delay()).get(timeout=30) == "done"
            with pytest.raises(TaskFailedError, match="KeyError"):
                await (await bad.delay()).get(timeout=30)
    assert "hook broke" in caplog.text


async def test_error_handler_gets_the_exception_and_signature(server: Server) -> None:
    seen: list[tuple[str, str]] = []

    @server.task("bad")
    async def bad() -> None:
        raise LookupError("missing")

    async def handler(exc: BaseException, sig: Signature | None) -> None:
        seen.append((repr(exc), sig.name if sig else ""))

    worker = server.new_worker("w")
    worker.set_error_handler(handler)
    async with worker:
        with pytest.raises(TaskFailedError):
            await (await bad.delay()).get(timeout=30)
        await until(lambda: bool(seen))
    assert seen == [("LookupError('missing')", "bad")]


# -- time limits --------------------------------------------------------------------------------------------


async def test_async_task_over_its_time_limit_is_cancelled(server: Server) -> None:
    cancelled = asyncio.Event()
    errors: list[BaseException] = []

    @server.task("slow", time_limit=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = server.new_worker("w")
    worker.set_error_handler(lambda exc, sig: errors.append(exc))
    async with worker:
        with pytest.raises(TaskFailedError) as info:
            await (await slow.delay()).get(timeout=30)
    assert cancelled.is_set()
    assert info.value.error == (
        "TaskTimeLimitExceeded: task slow exceeded its time limit of 0.05 s and was cancelled"
    )
    assert isinstance(errors[0], TaskTimeLimitExceeded)
    assert isinstance(errors[0], TimeoutError)


async def test_sync_task_over_the_workers_time_limit_fails(server: Server) -> None:
    @server.task("sleepy")
    def sleepy() -> None:
        time.sleep(0.3)

    @server.task("own_limit", time_limit=30)
    async def own_limit() -> str:
        await asyncio.sleep(0.1)
        return "finished"

    @server.task("raises_timeout")
    async def raises_timeout() -> None:
        raise TimeoutError("my own timeout")

    async with server.new_worker("w", task_time_limit=0.05):
        with pytest.raises(TaskFailedError) as info:
            await (await sleepy.delay()).get(timeout=30)
        assert await (await own_limit.delay()).get(timeout=30) == "finished"  # its own limit wins
        with pytest.raises(TaskFailedError) as own:
            await (await raises_timeout.delay()).get(timeout=30)
    assert "exceeded its time limit of 0.05 s and was cancelled (its thread cannot be stopped)" in (
        info.value.error
    )
    assert own.value.error == "TimeoutError: my own timeout"


# -- unregistered tasks -------------------------------------------------------------------------------------


class CountingConsumer(Consumer):
    """Delegates to a real consumer and notes when messages are handed back."""

    def __init__(self, inner: Consumer, requeues: list[float]) -> None:
        self.inner = inner
        self.requeues = requeues

    async def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        return await self.inner.fetch(max_count, timeout)

    async def ack(self, delivery: Delivery) -> None:
        await self.inner.ack(delivery)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        self.requeues.append(time.monotonic())
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
        self.requeues: list[float] = []

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return CountingConsumer(super().consumer(queue, prefetch=prefetch, tag=tag), self.requeues)


async def test_unregistered_task_is_handed_back_with_growing_back_off(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    broker = CountingBroker(config)
    server = Server(config, broker=broker, backend=RecordingBackend(config))
    with caplog.at_level(logging.WARNING, "machinery_aio.worker"):
        async with server.new_worker("w", unregistered_backoff=(0.02, 0.08)):
            result = await server.send_task(Signature(name="later_known", args=ints(5)))
            await until(lambda: len(broker.requeues) >= 4)
            assert (await result.get_state()).state is State.PENDING  # never received
            server.register_task("later_known", lambda x: x * 2)
            assert await result.get(timeout=30) == 10  # nothing was lost
    gaps = [b - a for a, b in zip(broker.requeues, broker.requeues[1:], strict=False)]
    assert gaps[0] >= 0.04 * 0.9
    assert gaps[1] >= 0.08 * 0.9
    assert gaps[2] >= 0.08 * 0.9
    assert caplog.text.count("is not registered on worker w") == 1  # logged once, not per hand-back
    await server.close()


async def test_held_unregistered_task_takes_no_run_slot_and_is_released_on_stop(server: Server) -> None:
    @server.task("known")
    async def known() -> str:
        return "ran"

    unknown = await server.send_task(Signature(name="nobody_knows"))
    worker = server.new_worker("w", concurrency=1, unregistered_backoff=(60.0, 60.0), grace_period=60)
    async with asyncio.timeout(20):
        async with worker:
            await until(lambda: worker.running_tasks == 1)
            assert await (await known.delay()).get(timeout=30) == "ran"
    pending = await server.broker.get_pending_tasks()
    assert [p.uuid for p in pending] == [unknown.task_uuid]  # handed back at once, not lost


async def test_ignore_when_task_not_registered_drops_the_task(server: Server) -> None:
    @server.task("known")
    async def known() -> str:
        return "ran"

    ignored = await server.send_task(Signature(name="nobody", ignore_when_task_not_registered=True))
    async with server.new_worker("w", concurrency=1):
        assert await (await known.delay()).get(timeout=30) == "ran"
    assert await server.broker.get_pending_tasks() == []
    assert await server.broker.get_delayed_tasks() == []
    assert await server.broker.get_dead_letters() == []
    assert backend_of(server).states_of(ignored.task_uuid) == [P]


# -- bad input ----------------------------------------------------------------------------------------------


BAD_BODIES: list[tuple[bytes, str, str]] = [
    # body, uuid recorded as FAILURE (or ""), text expected in the reason
    (b"not json at all", "", "message is not valid JSON"),
    (b"", "", "message is not valid JSON"),
    (b"[1, 2, 3]", "", "not a JSON object, so not a Signature"),
    (b'{"UUID":"task_noname"}', "task_noname", "message has no task Name"),
    (
        b'{"UUID":"task_badfield","Name":"add","Priority":"high"}',
        "task_badfield",
        "message is not a valid Signature: Priority",
    ),
    (
        b'{"UUID":"task_float","Name":"add","Args":[{"Type":"int64","Value":1.5}]}',
        "task_float",
        "bad arguments for task add: 1.5 is not an integer literal, as int64 needs",
    ),
    (
        b'{"UUID":"task_type","Name":"add","Args":[{"Type":"complex128","Value":1}]}',
        "task_type",
        "complex128 is not one of supported types",
    ),
    (
        b'{"UUID":"task_count","Name":"add","Args":[{"Type":"int64","Value":1}]}',
        "task_count",
        "task 'add' got 1 args; missing b",
    ),
    (
        b'{"UUID":"task_many","Name":"add","Args":[' + b",".join([b'{"Type":"int64","Value":1}'] * 3) + b"]}",
        "task_many",
        "task 'add' takes 2 args but got 3",
    ),
    (
        b'{"UUID":"task_str","Name":"add","Args":[{"Type":"string","Value":"1"},{"Type":"int64","Value":2}]}',
        "task_str",
        "task 'add' arg 1: expected int, got str",
    ),
    (
        b'{"UUID":"task_huge","Name":"half","Args":[{"Type":"float64","Value":1' + b"0" * 400 + b"}]}",
        "task_huge",
        "out of range for float64",
    ),
    (
        b'{"UUID":"task_retry","Name":"add","RetryCount":3,"Args":[{"Type":"int64","Value":"x"}]}',
        "task_retry",
        "'x' is not int64",
    ),
]


async def test_bad_messages_are_dead_lettered_recorded_and_the_worker_goes_on(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BaseException] = []

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task("half")
    async def half(x: float) -> float:
        return x / 2

    queue = server.config.default_queue
    worker = server.new_worker("w", concurrency=2)
    worker.set_error_handler(lambda exc, sig: errors.append(exc))
    with caplog.at_level(logging.ERROR):
        async with worker:
            for body, _, _ in BAD_BODIES:
                await push_raw(server.broker, queue, body)  # type: ignore[arg-type]
            good = await add.delay(2, 3)
            assert await good.get(timeout=30) == 5
            await until(lambda: _dead_count(server, len(BAD_BODIES)))
            await until(lambda: worker.running_tasks == 0)
    letters = await server.broker.get_dead_letters(queue)
    assert sorted(letter.body.encode() for letter in letters) == sorted(b for b, _, _ in BAD_BODIES)
    by_body = {letter.body.encode(): letter.reason for letter in letters}
    for body, uuid, text in BAD_BODIES:
        assert text in by_body[body], (body, by_body[body])
        if uuid:
            state = await server.get_async_result(uuid).get_state()
            assert state.state is State.FAILURE, uuid
            assert text in state.error
    assert await server.broker.get_pending_tasks() == []
    assert await server.broker.get_delayed_tasks() == []  # bad args are not retried
    assert errors  # bad arguments reach the error handler
    assert caplog.text.count("invalid message set aside") == 5


async def _dead_count(server: Server, expected: int) -> bool:
    return len(await server.broker.get_dead_letters()) == expected


# -- broker and backend errors ----------------------------------------------------------------------------


class FlakyFetchBroker(RecordingBroker):
    """The first fetch fails, as a broker connection that drops once."""

    failures = 1

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        inner = super().consumer(queue, prefetch=prefetch, tag=tag)
        broker = self

        class Flaky(CountingConsumer):
            async def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
                if broker.failures:
                    broker.failures -= 1
                    raise ConnectionError("connection reset by peer")
                return await super().fetch(max_count, timeout)

        return Flaky(inner, [])


async def test_broker_errors_are_reported_and_survived(config: Config) -> None:
    server = Server(config, broker=FlakyFetchBroker(config))
    server.register_task("echo", lambda x: x)
    reported: list[tuple[str, Signature | None]] = []
    worker = server.new_worker("w")
    worker.set_error_handler(lambda exc, sig: reported.append((str(exc), sig)))
    async with worker:
        result = await server.send_task(Signature(name="echo", args=[Arg.of("hi")]))
        assert await result.get(timeout=30) == "hi"
    assert reported == [("connection reset by peer", None)]
    await server.close()


class FlakyBackend(RecordingBackend):
    """Fails the first RECEIVED write, as a result store that drops once."""

    failures = 1

    async def set_state(self, state: Any) -> None:
        if state.state is State.RECEIVED and self.failures:
            self.failures -= 1
            raise ConnectionError("backend unavailable")
        await super().set_state(state)


async def test_a_backend_error_hands_the_message_back(config: Config) -> None:
    server = Server(config, backend=FlakyBackend(config))
    server.register_task("echo", lambda x: x)
    async with server.new_worker("w"):
        result = await server.send_task(Signature(name="echo", args=[Arg.of(5)]))
        assert await result.get(timeout=30) == 5
    assert await server.broker.get_dead_letters() == []
    await server.close()


# -- stopping ------------------------------------------------------------------------------------------------


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


def test_worker_reprs_and_arguments(unique: str) -> None:
    worker = Worker(Server(Config()), "tag", 3, "q")
    assert repr(worker) == "<Worker tag queue='q' concurrency=3>"


# -- launch() in a real process with real signals ----------------------------------------------------------


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
