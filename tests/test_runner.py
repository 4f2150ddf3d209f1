"""The runner: one message run as Go's Worker.Process: states, results, retries, ETAs, callbacks,
chords, time limits, bad input, the stored error text and the per-task log lines.

Most tests drive it through a real worker on memory://, as users do; the first ones call
``TaskRunner.process`` directly to pin what it tells the worker to do with a message.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
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
    TaskState,
    TaskTimeLimitExceeded,
)
from machinery_aio.gotime import unix_nanos
from machinery_aio.retry import fibonacci_next
from machinery_aio.runner import Action, Outcome, TaskRunner, error_text
from machinery_aio.tasks import TaskFunction
from tests.support.engine import (  # noqa: F401 - config_fixture and server_fixture are fixtures
    P,
    R,
    S,
    backend_of,
    broker_of,
    config_fixture,
    in_state,
    pending_count,
    push_raw,
    register_math,
    server_fixture,
    task,
    until,
)
from tests.support.recording import RecordingBackend

CLOCK_SLACK = timedelta(milliseconds=1)
"""Clock granularity allowed when comparing wall-clock times (not a timing threshold)."""


# -- what the runner tells the worker --------------------------------------------------------------


@pytest.fixture
def runner(server: Server) -> TaskRunner:
    async def add(a: int, b: int) -> int:
        return a + b

    return TaskRunner({"add": TaskFunction("add", add)}, server.backend, server.publisher, tag="direct")


async def test_process_runs_a_registered_task_and_says_ack(runner: TaskRunner, server: Server) -> None:
    sig = task("add", 2, 3, uuid="task_direct")
    assert await runner.process(sig.to_json()) == Outcome(Action.ACK)
    state = await server.backend.get_state("task_direct")
    assert state is not None
    assert (state.state, [r.value for r in state.results or ()]) == (State.SUCCESS, [5])


async def test_a_failure_with_stop_task_deletion_on_error_says_keep(server: Server) -> None:
    async def boom() -> None:
        raise ValueError("boom")

    runner = TaskRunner({"boom": TaskFunction("boom", boom)}, server.backend, server.publisher, tag="direct")
    kept = task("boom", uuid="task_kept", stop_task_deletion_on_error=True)
    assert await runner.process(kept.to_json()) == Outcome(Action.KEEP)
    state = await server.backend.get_state("task_kept")
    assert state is not None
    assert (state.state, state.error) == (State.FAILURE, "boom")
    plain = task("boom", uuid="task_plain")
    assert await runner.process(plain.to_json()) == Outcome(Action.ACK)
    retried = task("boom", uuid="task_retried", stop_task_deletion_on_error=True, retry_count=1)
    assert await runner.process(retried.to_json()) == Outcome(Action.ACK)  # re-sent, not failed


async def test_process_says_unregistered_and_stores_nothing(runner: TaskRunner, server: Server) -> None:
    sig = task("nobody", uuid="task_unknown")
    assert await runner.process(sig.to_json()) == Outcome(Action.UNREGISTERED, task_name="nobody")
    assert await server.backend.get_state("task_unknown") is None
    ignored = task("nobody", uuid="task_ignored", ignore_when_task_not_registered=True)
    assert await runner.process(ignored.to_json()) == Outcome(Action.ACK)  # dropped, as Go does
    assert await server.backend.get_state("task_ignored") is None


async def test_process_dead_letters_what_is_not_a_signature(runner: TaskRunner, server: Server) -> None:
    outcome = await runner.process(b"not json")
    assert outcome.action is Action.DEAD_LETTER
    assert outcome.reason.startswith("message is not valid JSON")
    outcome = await runner.process(b'{"UUID":"task_noname"}')
    assert outcome.action is Action.DEAD_LETTER
    state = await server.backend.get_state("task_noname")
    assert state is not None
    assert (state.state, state.error) == (State.FAILURE, "message has no task Name")


async def test_process_hands_a_future_eta_back_to_the_brokers_delay(
    runner: TaskRunner, server: Server
) -> None:
    eta = datetime.now(UTC) + timedelta(hours=1)
    sig = task("add", 1, 1, uuid="task_later", eta=eta, headers={})
    assert await runner.process(sig.to_json()) == Outcome(Action.ACK)
    [delayed] = await server.broker.get_delayed_tasks()
    assert (delayed.uuid, delayed.eta) == ("task_later", eta)
    assert await server.backend.get_state("task_later") is None  # not received: it did not run


def test_error_text_is_gos_message_or_the_type_with_it() -> None:
    assert error_text(ValueError("deliberate failure")) == "deliberate failure"
    assert error_text(ValueError("deliberate failure"), with_type=True) == "ValueError: deliberate failure"
    assert error_text(ValueError()) == "ValueError"  # no message: the type's name
    assert error_text(KeyError("k")) == "'k'"

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert error_text(Unprintable()) == "<unprintable Unprintable>"


# -- running tasks ---------------------------------------------------------------------------------


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
        await until(lambda: in_state(blocked.get_state(), State.STARTED))
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
            (exits, "4"),
            (exits_async, "bye"),
            (unsendable, "object value cannot be sent as JSON"),
            (nan, "JSON has no NaN or infinity"),
        ]:
            with pytest.raises(TaskFailedError) as info:
                await (await handle.delay()).get(timeout=30)
            assert error in info.value.error
        assert await (await ok.delay()).get(timeout=30) == "still here"


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
            data=ctx.data,
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
    assert seen["data"] == {}


# -- states ----------------------------------------------------------------------------------------


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
    assert info.value.error == "bad input"
    backend = backend_of(server)
    assert backend.states_of(good.task_uuid) == [P, R, S, State.SUCCESS]
    assert backend.states_of(failed.task_uuid) == [P, R, S, State.FAILURE]
    final = await failed.get_state()
    assert final.task_name == "bad"
    assert final.created_at.year > 1


# -- the error text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("go_compatible", "expected"),
    [(True, "deliberate failure"), (False, "ValueError: deliberate failure")],
)
async def test_the_error_text_is_gos_unless_go_compatible_is_off(
    unique: str, go_compatible: bool, expected: str
) -> None:
    url = f"memory://{unique}"
    config = Config(broker=url, result_backend=url, default_queue=f"{unique}_q", go_compatible=go_compatible)
    server = Server(config)
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    sig = Signature(name="fail", args=[Arg.of("deliberate failure")], on_error=[task("collect", 1)])
    async with server, server.new_worker("w"):
        result = await server.send_task(sig)
        with pytest.raises(TaskFailedError) as info:
            await result.get(timeout=30)
        await until(lambda: "collect" in calls)
    assert info.value.error == expected  # what a reader of the result gets
    assert (await result.get_state()).error == expected  # what a Go reader of the record sees
    assert calls["collect"] == [[expected, 1]]  # what an OnError callback receives first


# -- retries ---------------------------------------------------------------------------------------


def test_fibonacci_next_is_gos() -> None:
    assert [fibonacci_next(n) for n in (0, 1, 2, 3, 5, 8, 10, 13)] == [1, 2, 3, 5, 8, 13, 13, 21]


async def test_retry_count_republishes_with_the_same_uuid_after_fibonacci_seconds(server: Server) -> None:
    attempts: dict[str, int] = {}
    failed_at: list[float] = []

    @server.task("flaky")
    async def flaky(key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if key == "never" or attempts[key] == 1:
            failed_at.append(time.time())
            raise ConnectionError(f"attempt {attempts[key]}")
        return f"{key} ok after {attempts[key]}"

    async with server.new_worker("w", concurrency=2):
        recovers = await flaky.with_options(retry_count=2).delay("recovers")
        gives_up = await flaky.with_options(retry_count=1).delay("never")
        assert await recovers.get(timeout=30) == "recovers ok after 2"
        with pytest.raises(TaskFailedError) as info:
            await gives_up.get(timeout=30)
    assert info.value.error == "attempt 2"
    backend = backend_of(server)
    assert backend.states_of(recovers.task_uuid) == [P, R, S, State.RETRY, R, S, State.SUCCESS]
    assert backend.states_of(gives_up.task_uuid) == [P, R, S, State.RETRY, R, S, State.FAILURE]
    retried = [s for s in broker_of(server).published() if s.uuid == recovers.task_uuid]
    assert len(retried) == 2
    again = retried[1]
    assert (again.retry_count, again.retry_timeout) == (1, 1)
    assert again.eta is not None
    assert unix_nanos(again.eta) / 1e9 >= min(failed_at) + 1 - 0.01


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
    retry = State.RETRY
    assert backend_of(server).states_of(result.task_uuid) == [
        P,
        R,
        S,
        retry,
        R,
        S,
        retry,
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


# -- ETA -------------------------------------------------------------------------------------------


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
    await server.backend.set_state(TaskState.new(sig, State.PENDING))
    async with server.new_worker("w"):
        await push_raw(server, sig.to_json())
        if early > 1:  # handed to the broker's delay instead of held by the worker
            await until(lambda: _delayed_has(server, sig.uuid))
            assert State.RECEIVED not in backend_of(server).states_of(sig.uuid)
        await server.get_async_result(sig.uuid).get(timeout=30)
    assert sig.eta is not None
    assert started[0] >= sig.eta - CLOCK_SLACK


async def _delayed_has(server: Server, uuid: str) -> bool:
    return any(s.uuid == uuid for s in await server.broker.get_delayed_tasks())


# -- workflows -------------------------------------------------------------------------------------


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
    failing = Signature(name="fail", args=[Arg.of("member broke")])
    async with server.new_worker("w", concurrency=0) as worker:
        chord = await server.send_chord(Chord(Group(task("add", 1), failing, task("add", 3)), callback))
        with pytest.raises(TaskFailedError, match="member broke"):
            await chord.get(timeout=30)
        with pytest.raises(TaskFailedError) as info:
            await chord.callback.get(timeout=30)
        await until(lambda: len(calls.get("collect", [])) == 1 and worker.running_tasks == 0)
    assert info.value.error == (
        f"chord {chord.group_results[0].signature.group_uuid}: 1 of 3 members failed; "
        f"first {failing.uuid}: member broke"
    )
    # the callback itself never ran; its OnError callback got the error text prepended
    [on_error_args] = calls["collect"]
    assert on_error_args == [info.value.error, 5]


class ForgetfulBackend(RecordingBackend):
    """Its group records are gone by the time the last member ends (expired or purged)."""

    async def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        raise LookupError(f"group {group_uuid}: no state for task_gone")


async def test_a_chord_whose_member_records_are_gone_fails_its_callback(config: Config) -> None:
    server = Server(config, backend=ForgetfulBackend(config))
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    callback = task("collect", on_error=[task("collect", 5)])
    async with server, server.new_worker("w", concurrency=0) as worker:
        chord = await server.send_chord(Chord(Group(task("add", 1), task("add", 2)), callback))
        with pytest.raises(TaskFailedError) as info:
            await chord.callback.get(timeout=30)
        await until(lambda: len(calls.get("collect", [])) == 1 and worker.running_tasks == 0)
    group_uuid = chord.group_results[0].signature.group_uuid
    assert info.value.error == f"group {group_uuid}: no state for task_gone"
    assert calls["collect"] == [[info.value.error, 5]]  # its OnError ran; the callback never did


async def test_on_error_gets_the_error_text_prepended_and_on_success_is_not_sent(server: Server) -> None:
    calls: dict[str, list[list[Any]]] = {}
    register_math(server, calls)
    async with server.new_worker("w") as worker:
        sig = Signature(
            name="fail",
            args=[Arg.of("it broke")],
            on_error=[task("collect", 7, 8)],
            on_success=[task("collect", 1)],
        )
        result = await server.send_task(sig)
        with pytest.raises(TaskFailedError):
            await result.get(timeout=30)
        await until(lambda: "collect" in calls and worker.running_tasks == 0)
    assert calls["collect"] == [["it broke", 7, 8]]


# -- time limits -----------------------------------------------------------------------------------


async def test_async_task_over_its_time_limit_is_cancelled(server: Server) -> None:
    cancelled = asyncio.Event()

    @server.task("slow", time_limit=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with server.new_worker("w"):
        with pytest.raises(TaskFailedError) as info:
            await (await slow.delay()).get(timeout=30)
    assert cancelled.is_set()
    assert info.value.error == "task slow exceeded its time limit of 0.05 s and was cancelled"


async def test_the_time_limit_exception_is_a_timeout_error(server: Server) -> None:
    errors: list[BaseException] = []

    @server.task("slow", time_limit=0.05)
    async def slow() -> None:
        await asyncio.sleep(30)

    worker = server.new_worker("w")
    worker.set_error_handler(lambda exc, sig: errors.append(exc))
    async with worker:
        with pytest.raises(TaskFailedError):
            await (await slow.delay()).get(timeout=30)
        await until(lambda: bool(errors))
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
    assert info.value.error == (
        "task sleepy exceeded its time limit of 0.05 s and was cancelled (its thread cannot be stopped)"
    )
    assert own.value.error == "my own timeout"


# -- bad input -------------------------------------------------------------------------------------


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
                await push_raw(server, body)
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
    assert len(errors) == 7  # bad arguments reach the error handler; undecodable messages have no task
    assert caplog.text.count("invalid message set aside") == 5


async def _dead_count(server: Server, expected: int) -> bool:
    return len(await server.broker.get_dead_letters()) == expected


# -- per-task log lines ----------------------------------------------------------------------------

DURATION = r"\d+\.\d{6}s"


def task_lines(caplog: pytest.LogCaptureFixture, uuid: str) -> list[tuple[str, str]]:
    """(level, message) of every record on ``machinery_aio.tasks`` that names ``uuid``."""
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "machinery_aio.tasks" and uuid in r.getMessage()
    ]


def matches(lines: list[tuple[str, str]], expected: list[tuple[str, str]]) -> bool:
    return len(lines) == len(expected) and all(
        level == want_level and re.fullmatch(pattern, message)
        for (level, message), (want_level, pattern) in zip(lines, expected, strict=True)
    )


async def test_one_log_line_per_task_event(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    attempts: dict[str, int] = {}

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task("flaky")
    async def flaky(key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if key == "fails" or attempts[key] == 1:
            raise ValueError(f"try {attempts[key]}")
        return "ok"

    @server.task("later")
    async def later() -> str:
        attempts["later"] = attempts.get("later", 0) + 1
        if attempts["later"] == 1:
            raise RetryTaskLater("busy", 0.01)
        return "ok"

    with caplog.at_level(logging.INFO, "machinery_aio.tasks"):
        async with server.new_worker("w", concurrency=1):
            ok = await add.delay(1, 2)
            retried = await flaky.with_options(retry_count=1, retry_timeout=0).delay("retried")
            fails = await flaky.delay("fails")
            deferred = await later.delay()
            await ok.get(timeout=30)
            assert await retried.get(timeout=30) == "ok"
            with pytest.raises(TaskFailedError):
                await fails.get(timeout=30)
            assert await deferred.get(timeout=30) == "ok"
    u = re.escape
    assert matches(
        task_lines(caplog, ok.task_uuid),
        [
            ("INFO", rf"received add\[{u(ok.task_uuid)}\]"),
            ("INFO", rf"add\[{u(ok.task_uuid)}\] succeeded in {DURATION}"),
        ],
    ), task_lines(caplog, ok.task_uuid)
    uid = u(retried.task_uuid)
    assert matches(
        task_lines(caplog, retried.task_uuid),
        [
            ("INFO", rf"received flaky\[{uid}\]"),
            (
                "WARNING",
                rf"flaky\[{uid}\] failed in {DURATION}: ValueError: try 1; "
                r"retrying in 1 s \(0 retries left\)",
            ),
            ("INFO", rf"received flaky\[{uid}\]"),
            ("INFO", rf"flaky\[{uid}\] succeeded in {DURATION}"),
        ],
    ), task_lines(caplog, retried.task_uuid)
    uid = u(fails.task_uuid)
    assert matches(
        task_lines(caplog, fails.task_uuid),
        [
            ("INFO", rf"received flaky\[{uid}\]"),
            ("ERROR", rf"flaky\[{uid}\] failed in {DURATION}: ValueError: try 1"),
        ],
    ), task_lines(caplog, fails.task_uuid)
    uid = u(deferred.task_uuid)
    assert matches(
        task_lines(caplog, deferred.task_uuid),
        [
            ("INFO", rf"received later\[{uid}\]"),
            ("INFO", rf"later\[{uid}\] retry in 0\.01 s \(RetryTaskLater after {DURATION}\): busy"),
            ("INFO", rf"received later\[{uid}\]"),
            ("INFO", rf"later\[{uid}\] succeeded in {DURATION}"),
        ],
    ), task_lines(caplog, deferred.task_uuid)


async def test_task_log_lines_follow_the_loggers_level(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    with caplog.at_level(logging.WARNING, "machinery_aio.tasks"):
        async with server.new_worker("w"):
            result = await add.delay(1, 2)
            await result.get(timeout=30)
    assert task_lines(caplog, result.task_uuid) == []
