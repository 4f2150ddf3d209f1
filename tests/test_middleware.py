"""Middleware: the hooks around publishing and running, their order and outcomes, failing hooks,
worker-level middlewares, and Go's handlers as adapters over them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import machinery_aio
from machinery_aio import (
    Arg,
    Chain,
    Config,
    Group,
    Middleware,
    RetryTaskLater,
    Server,
    Signature,
    State,
    TaskContext,
    TaskFailedError,
    TaskOutcome,
)
from machinery_aio.middleware import Middlewares
from tests.support.engine import (  # noqa: F401 - config_fixture and server_fixture are fixtures
    config_fixture,
    push_raw,
    server_fixture,
    task,
    until,
)

Event = tuple[Any, ...]


class Recorder(Middleware):
    """Notes every hook call as a tuple in a shared list, with what the hook could see."""

    def __init__(self, events: list[Event], label: str = "m") -> None:
        self.events = events
        self.label = label

    async def before_publish(self, signature: Signature) -> None:
        self.events.append((self.label, "before_publish", signature.name, signature.uuid))

    async def after_publish(self, signature: Signature) -> None:
        self.events.append((self.label, "after_publish", signature.name, signature.uuid))

    async def before_task(self, ctx: TaskContext) -> None:
        self.events.append((self.label, "before_task", ctx.task_name, ctx.task_uuid))

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        self.events.append((self.label, "after_task", ctx.task_name, ctx.task_uuid, outcome))


def outcomes(events: list[Event], uuid: str = "") -> list[TaskOutcome]:
    return [e[4] for e in events if e[1] == "after_task" and (not uuid or e[3] == uuid)]


def test_the_public_names() -> None:
    for name in ("Middleware", "TaskContext", "TaskOutcome"):
        assert name in machinery_aio.__all__
    outcome = TaskOutcome(State.SUCCESS)
    assert (outcome.results, outcome.error, outcome.exception, outcome.duration) == ([], None, None, 0.0)


# -- publishing ----------------------------------------------------------------------------------------


async def test_before_publish_sees_the_uuid_and_may_add_headers(server: Server) -> None:
    seen: list[tuple[str, dict[str, Any] | None]] = []

    class Stamp(Middleware):
        async def before_publish(self, signature: Signature) -> None:
            seen.append((signature.uuid, dict(signature.headers or {})))
            assert signature.headers is not None
            signature.headers["trace_id"] = "abc"

    server.add_middleware(Stamp())

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    sig = Signature(name="add", args=[Arg.of(1), Arg.of(2)])
    result = await server.send_task(sig)
    delayed = await add.delay(3, 4)
    assert [uuid for uuid, _ in seen] == [result.task_uuid, delayed.task_uuid]
    assert all(uuid.startswith("task_") for uuid, _ in seen)
    assert [headers for _, headers in seen] == [{}, {}]
    assert [s.headers for s in await server.broker.get_pending_tasks()] == [{"trace_id": "abc"}] * 2


async def test_hooks_run_in_order_before_and_in_reverse_after(config: Config) -> None:
    events: list[Event] = []
    server = Server(config, middlewares=[Recorder(events, "first")])
    server.add_middleware(Recorder(events, "second"))

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with server, server.new_worker("w"):
        result = await add.delay(1, 2)
        assert await result.get(timeout=30) == 3
        await until(lambda: len(events) == 8)
    assert [(label, hook) for label, hook, *_ in events] == [
        ("first", "before_publish"),
        ("second", "before_publish"),
        ("second", "after_publish"),
        ("first", "after_publish"),
        ("first", "before_task"),
        ("second", "before_task"),
        ("second", "after_task"),
        ("first", "after_task"),
    ]
    assert {e[3] for e in events} == {result.task_uuid}


def test_the_chain_knows_which_hooks_are_overridden() -> None:
    assert not Middlewares().running
    assert not Middlewares().publishing

    class AfterOnly(Middleware):
        async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
            return None

    chain = Middlewares([AfterOnly()])
    assert chain.running
    assert not chain.publishing  # the publisher skips publish hooks altogether
    with pytest.raises(TypeError, match="expected a Middleware, got function"):
        chain.add(lambda sig: None)  # type: ignore[arg-type]


async def test_a_middleware_added_while_the_worker_runs_is_used(server: Server) -> None:
    events: list[Event] = []

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with server.new_worker("w"):
        assert await (await add.delay(1, 1)).get(timeout=30) == 2
        server.add_middleware(Recorder(events))
        result = await add.delay(2, 2)
        assert await result.get(timeout=30) == 4
        await until(lambda: len(events) == 4)
    assert [hook for _, hook, *_ in events] == [
        "before_publish",
        "after_publish",
        "before_task",
        "after_task",
    ]


# -- running -------------------------------------------------------------------------------------------


async def test_before_task_knows_the_task_and_data_carries_to_after_task(server: Server) -> None:
    seen: list[tuple[str, str, Any]] = []

    class Timer(Middleware):
        async def before_task(self, ctx: TaskContext) -> None:
            seen.append(("before", ctx.task_uuid, dict(ctx.data)))
            ctx.data["started"] = ctx.task_uuid

        async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
            seen.append(("after", ctx.task_uuid, ctx.data.get("started")))

    server.add_middleware(Timer())

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    async with server.new_worker("w", concurrency=1):
        first = await add.delay(1, 2)
        second = await add.delay(3, 4)
        await second.get(timeout=30)
        await until(lambda: len(seen) == 4)
    assert seen == [
        ("before", first.task_uuid, {}),
        ("after", first.task_uuid, first.task_uuid),
        ("before", second.task_uuid, {}),  # a fresh ctx.data for every run
        ("after", second.task_uuid, second.task_uuid),
    ]


async def test_after_task_gets_python_results_and_a_duration(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events))

    @server.task("pair")
    async def pair(a: int) -> tuple[int, str]:
        await asyncio.sleep(0.01)
        return a, str(a)

    @server.task("mapping")
    def mapping() -> dict[str, list[int]]:
        return {"k": [1, 2]}

    @server.task("nothing")
    async def nothing() -> None:
        return None

    async with server.new_worker("w"):
        results = [await pair.delay(7), await mapping.delay(), await nothing.delay()]
        for result in results:
            await result.get(timeout=30)
        await until(lambda: len(outcomes(events)) == 3)
    by_uuid = {r.task_uuid: outcomes(events, r.task_uuid)[0] for r in results}
    assert [by_uuid[r.task_uuid].results for r in results] == [[7, "7"], [{"k": [1, 2]}], []]
    for outcome in by_uuid.values():
        assert outcome.state is State.SUCCESS
        assert (outcome.error, outcome.exception) == (None, None)
        assert outcome.duration >= 0
    assert by_uuid[results[0].task_uuid].duration >= 0.01  # it covers the run


async def test_after_task_runs_once_the_state_is_recorded_and_callbacks_sent(server: Server) -> None:
    seen: list[tuple[str, State, int]] = []

    class Check(Middleware):
        async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
            state = await server.backend.get_state(ctx.task_uuid)
            assert state is not None
            seen.append((ctx.task_name, state.state, await server.broker.count_pending()))

    server.add_middleware(Check())

    @server.task("first")
    async def first() -> int:
        return 1

    @server.task("second")
    async def second(x: int) -> int:
        return x + 1

    async with server.new_worker("w", concurrency=1):
        chain = await server.send_chain(Chain(Signature(name="first"), Signature(name="second")))
        assert await chain.get(timeout=30) == 2
        await until(lambda: len(seen) == 2)
    # when "first" ended, its SUCCESS was stored and "second" already published
    assert seen == [("first", State.SUCCESS, 1), ("second", State.SUCCESS, 0)]


async def test_a_failure_gives_the_exceptions_message(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events))

    @server.task("fail")
    async def fail() -> None:
        raise ValueError("deliberate failure")

    async with server.new_worker("w"):
        result = await fail.delay()
        with pytest.raises(TaskFailedError):
            await result.get(timeout=30)
        await until(lambda: bool(outcomes(events)))
    [outcome] = outcomes(events)
    assert outcome.state is State.FAILURE
    assert outcome.error == "deliberate failure"
    assert isinstance(outcome.exception, ValueError)
    assert outcome.results == []
    assert outcome.duration >= 0


async def test_the_outcomes_error_follows_go_compatible(unique: str) -> None:
    url = f"memory://{unique}"
    events: list[Event] = []
    config = Config(broker=url, result_backend=url, default_queue=f"{unique}_q", go_compatible=False)
    server = Server(config, middlewares=[Recorder(events)])

    @server.task("fail")
    async def fail() -> None:
        raise ValueError("deliberate failure")

    async with server, server.new_worker("w"):
        with pytest.raises(TaskFailedError):
            await (await fail.delay()).get(timeout=30)
        await until(lambda: bool(outcomes(events)))
    assert outcomes(events)[0].error == "ValueError: deliberate failure"


async def test_a_task_that_retries_once_gives_retry_then_success(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events))
    attempts = 0

    @server.task("flaky")
    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("try again")
        return "ok"

    async with server.new_worker("w"):
        result = await flaky.with_options(retry_count=1).delay()
        assert await result.get(timeout=30) == "ok"
        await until(lambda: len(outcomes(events)) == 2)
    retry, success = outcomes(events, result.task_uuid)
    assert (retry.state, retry.error, type(retry.exception)) == (State.RETRY, "try again", ConnectionError)
    assert (success.state, success.results, success.error) == (State.SUCCESS, ["ok"], None)
    assert [e[1] for e in events if e[1].endswith("task")] == ["before_task", "after_task"] * 2
    # the retry's re-publish passes the publish hooks too, under the same UUID
    publishes = [e[3] for e in events if e[1] == "before_publish"]
    assert publishes == [result.task_uuid, result.task_uuid]


async def test_retry_task_later_gives_a_retry_outcome(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events))
    attempts = 0

    @server.task("later")
    async def later() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RetryTaskLater("busy", 0.01)
        return attempts

    async with server.new_worker("w"):
        result = await later.delay()
        assert await result.get(timeout=30) == 2
        await until(lambda: len(outcomes(events)) == 2)
    retry, success = outcomes(events, result.task_uuid)
    assert (retry.state, retry.error) == (State.RETRY, "busy")
    assert isinstance(retry.exception, RetryTaskLater)
    assert success.state is State.SUCCESS


async def test_bad_arguments_give_before_task_and_a_failed_after_task(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events))
    ran: list[int] = []

    @server.task("add")
    async def add(a: int, b: int) -> int:
        ran.append(a)
        return a + b

    async with server.new_worker("w") as worker:
        await push_raw(server, task("add", 1, uuid="task_bad_args").to_json())
        await until(lambda: bool(outcomes(events)) and worker.running_tasks == 0)
    assert [e[1] for e in events] == ["before_task", "after_task"]
    [outcome] = outcomes(events)
    assert outcome.state is State.FAILURE
    assert outcome.error == "bad arguments for task add: task 'add' got 1 args; missing b"
    assert ran == []
    [letter] = await server.broker.get_dead_letters()
    assert letter.reason == outcome.error


# -- hooks that fail ------------------------------------------------------------------------------------


class Broken(Middleware):
    async def before_publish(self, signature: Signature) -> None:
        raise RuntimeError("before_publish broke")

    async def after_publish(self, signature: Signature) -> None:
        raise RuntimeError("after_publish broke")

    async def before_task(self, ctx: TaskContext) -> None:
        raise RuntimeError("before_task broke")

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        raise RuntimeError("after_task broke")


async def test_a_failing_middleware_is_logged_and_costs_no_task(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[Event] = []
    server.add_middleware(Broken())
    server.add_middleware(Recorder(events))  # the hooks after a failing one still run

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    with caplog.at_level(logging.ERROR, "machinery_aio.middleware"):
        async with server.new_worker("w") as worker:
            result = await add.delay(1, 2)
            assert await result.get(timeout=30) == 3
            await until(lambda: len(events) == 4 and worker.running_tasks == 0)
    uuid = result.task_uuid
    for hook in ("before_publish", "after_publish", "before_task", "after_task"):
        assert f"middleware Broken.{hook} failed for {uuid} (the task goes on)" in caplog.text
        assert f"RuntimeError: {hook} broke" in caplog.text  # with the traceback
    assert [hook for _, hook, *_ in events] == [
        "before_publish",
        "after_publish",
        "before_task",
        "after_task",
    ]
    assert (await result.get_state()).state is State.SUCCESS
    # acked: nothing left to run, nothing held, nothing set aside
    assert await server.broker.get_pending_tasks() == []
    assert await server.broker.get_held_tasks() == []
    assert await server.broker.get_delayed_tasks() == []
    assert await server.broker.get_dead_letters() == []


async def test_sync_hooks_work_and_a_failing_sync_hook_costs_nothing(server: Server) -> None:
    seen: list[str] = []

    class Plain(Middleware):
        def before_task(self, ctx: TaskContext) -> None:  # type: ignore[override]
            seen.append(ctx.task_name)
            raise ValueError("plain hook broke")

    server.add_middleware(Plain())
    server.register_task("echo", lambda x: x)
    async with server.new_worker("w"):
        result = await server.send_task(Signature(name="echo", args=[Arg.of(5)]))
        assert await result.get(timeout=30) == 5
    assert seen == ["echo"]


# -- a worker's own middlewares ---------------------------------------------------------------------------


async def test_a_worker_middleware_applies_only_to_that_worker(server: Server) -> None:
    everywhere: list[Event] = []
    only_one: list[Event] = []
    server.add_middleware(Recorder(everywhere, "server"))

    @server.task("where")
    async def where(ctx: TaskContext) -> str:
        return ctx.worker_tag

    one = server.new_custom_queue_worker("one", 1, "queue_one")
    other = server.new_custom_queue_worker("other", 1, "queue_other")
    one.add_middleware(Recorder(only_one, "worker"))
    async with one, other:
        first = await where.with_options(routing_key="queue_one").delay()
        second = await where.with_options(routing_key="queue_other").delay()
        assert await first.get(timeout=30) == "one"
        assert await second.get(timeout=30) == "other"
        await until(lambda: len(outcomes(everywhere)) == 2 and len(outcomes(only_one)) == 1)
    assert [(e[1], e[3]) for e in only_one] == [
        ("before_task", first.task_uuid),
        ("after_task", first.task_uuid),
    ]
    assert {e[3] for e in everywhere if e[1] == "after_task"} == {first.task_uuid, second.task_uuid}
    assert len(one.runner.middlewares) == 2  # the server's and its own
    assert len(other.runner.middlewares) == 1


async def test_worker_middlewares_run_inside_the_servers(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder(events, "server"))
    server.register_task("echo", lambda x: x)
    worker = server.new_worker("w")
    worker.add_middleware(Recorder(events, "worker"))
    async with worker:
        result = await server.send_task(Signature(name="echo", args=[Arg.of(1)]))
        await result.get(timeout=30)
        await until(lambda: len(outcomes(events)) == 2)
    task_hooks = [(label, hook) for label, hook, *_ in events if hook.endswith("task")]
    assert task_hooks == [
        ("server", "before_task"),
        ("worker", "before_task"),
        ("worker", "after_task"),
        ("server", "after_task"),
    ]


# -- Go's handlers, as adapters ----------------------------------------------------------------------------


async def test_pre_publish_handler_sync_and_async_runs_before_every_publish(server: Server) -> None:
    seen: list[str] = []

    def stamp(sig: Signature) -> None:
        assert sig.headers is not None
        sig.headers["trace"] = "abc"
        seen.append(f"sync:{sig.name}")

    async def record(sig: Signature) -> None:
        await asyncio.sleep(0)
        seen.append(f"async:{sig.name}")

    server.set_pre_publish_handler(stamp)
    server.set_pre_publish_handler(record)
    assert not hasattr(server, "set_pre_task_handler")  # that name is the worker's (pre-run)
    await server.send_task(Signature(name="one"))
    await server.send_tasks([Signature(name="two")])
    await server.send_group(Group(Signature(name="three")))
    await server.publisher.republish(Signature(uuid="task_x", name="four", headers={}))
    assert seen == [
        f"{kind}:{name}" for name in ("one", "two", "three", "four") for kind in ("sync", "async")
    ]
    pending = await server.broker.get_pending_tasks()
    assert len(pending) == 4
    assert all(sig.headers == {"trace": "abc"} for sig in pending)


async def test_pre_and_post_task_handlers_wrap_the_task(server: Server) -> None:
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


async def test_error_handler_gets_final_failures_not_retries(server: Server) -> None:
    seen: list[tuple[str, str]] = []
    attempts: dict[str, int] = {}

    @server.task("bad")
    async def bad(key: str) -> None:
        attempts[key] = attempts.get(key, 0) + 1
        raise LookupError(f"missing {key}")

    async def handler(exc: BaseException, sig: Signature | None) -> None:
        seen.append((repr(exc), sig.uuid if sig else ""))

    worker = server.new_worker("w")
    worker.set_error_handler(handler)
    worker.set_error_handler(lambda exc, sig: seen.append(("sync", sig.uuid if sig else "")))
    async with worker:
        once = await bad.delay("once")
        twice = await bad.with_options(retry_count=1).delay("twice")
        for result in (once, twice):
            with pytest.raises(TaskFailedError):
                await result.get(timeout=30)
        await until(lambda: len(seen) == 4)
    assert attempts == {"once": 1, "twice": 2}
    assert sorted(seen) == sorted(
        [
            ("LookupError('missing once')", once.task_uuid),
            ("sync", once.task_uuid),
            ("LookupError('missing twice')", twice.task_uuid),
            ("sync", twice.task_uuid),
        ]
    )


async def test_failing_go_handlers_do_not_break_the_task(
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

    server.set_pre_publish_handler(broken)
    worker = server.new_worker("w")
    worker.set_pre_task_handler(broken)
    worker.set_post_task_handler(broken)
    worker.set_error_handler(broken)
    with caplog.at_level(logging.ERROR):
        async with worker:
            assert await (await ok.delay()).get(timeout=30) == "done"
            with pytest.raises(TaskFailedError) as info:
                await (await bad.delay()).get(timeout=30)
            await until(lambda: worker.running_tasks == 0)
    assert info.value.error == "'x'"
    for adapter in ("PrePublishHandler", "PreTaskHandler", "PostTaskHandler", "ErrorHandlerMiddleware"):
        assert f"middleware {adapter}." in caplog.text
    assert "hook broke" in caplog.text
