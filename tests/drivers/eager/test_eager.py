"""What is particular to eager://: tasks run inside send_task through the engine's runner,
with a worker's states, retries, errors, workflows and middlewares. Its backend passes the
contract suite (tests/contract/); its broker has no queues for the broker contract."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from machinery_aio import (
    Arg,
    Chain,
    Chord,
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
    TaskState,
)
from machinery_aio.config import ConfigError
from machinery_aio.drivers import create_backend, create_broker
from machinery_aio.drivers.eager.backend import EagerBackend
from machinery_aio.drivers.eager.broker import EagerBroker
from machinery_aio.errors import TaskNotRegisteredError


class StateLog(EagerBackend):
    """The eager backend, noting every state it stores."""

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.log: list[tuple[str, State]] = []

    async def set_states(self, states: Sequence[TaskState]) -> None:
        self.log += [(s.task_name or "?", s.state) for s in states]
        await super().set_states(states)


class Hooks(Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def before_publish(self, signature: Signature) -> None:
        self.calls.append(("before_publish", signature.name))

    async def after_publish(self, signature: Signature) -> None:
        self.calls.append(("after_publish", signature.name))

    async def before_task(self, ctx: TaskContext) -> None:
        self.calls.append(("before_task", ctx.signature.name))

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        self.calls.append(("after_task", f"{ctx.signature.name}:{outcome.state.value}"))


@pytest.fixture
def config(unique: str) -> Config:
    return Config(broker=f"eager://{unique}", result_backend=f"eager://{unique}", default_queue=unique)


@pytest.fixture
def backend(config: Config) -> StateLog:
    return StateLog(config)


@pytest.fixture
def server(config: Config, backend: StateLog) -> Server:
    server = Server(config, backend=backend)
    calls = {"flaky": 0}

    @server.task("add")
    async def add(*numbers: int) -> int:
        return sum(numbers)

    @server.task("fail")
    def fail(reason: str) -> int:
        raise ValueError(reason)

    @server.task("flaky")
    async def flaky(ctx: TaskContext) -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RetryTaskLater("not yet", delay=3600)  # eager:// skips the back-off
        return f"ok after {calls['flaky']}"

    @server.task("stamp")
    async def stamp() -> str:
        return datetime.now(UTC).isoformat()

    @server.task("nested")
    async def nested(n: int) -> int:
        inner = await add.delay(n, n)
        value: int = await inner.get(timeout=5)
        return value + 1

    return server


def add_sig(*numbers: int) -> Signature:
    return Signature(name="add", args=[Arg.of(n) for n in numbers])


async def test_delay_returns_with_success_stored_and_get_answers_without_waiting(
    server: Server, backend: StateLog
) -> None:
    result = await server.send_task(add_sig(1, 2))
    state = await result.get_state()
    assert state.state is State.SUCCESS
    assert await result.touch() == 3  # already final: nothing to wait for
    assert await result.get() == 3
    assert backend.log == [
        ("add", State.PENDING),
        ("add", State.RECEIVED),
        ("add", State.STARTED),
        ("add", State.SUCCESS),
    ]


async def test_a_failing_task_is_sent_normally_and_get_raises_with_its_message(server: Server) -> None:
    result = await server.send_task(Signature(name="fail", args=[Arg.of("disk full")]))
    state = await result.get_state()
    assert state.state is State.FAILURE
    assert state.error == "disk full"  # Go's bare message, as a worker stores it
    with pytest.raises(TaskFailedError, match="disk full"):
        await result.get()


async def test_retries_run_at_once_with_retry_states(server: Server, backend: StateLog) -> None:
    result = await server.send_task(Signature(name="flaky"))
    assert await result.get() == "ok after 3"
    states = [s for name, s in backend.log if name == "flaky" or name == "?"]
    assert states.count(State.RETRY) == 2
    assert states[-1] is State.SUCCESS


async def test_retry_count_on_errors_retries_then_fails(server: Server, backend: StateLog) -> None:
    sig = Signature(name="fail", args=[Arg.of("no")], retry_count=2)
    result = await server.send_task(sig)
    with pytest.raises(TaskFailedError, match="no"):
        await result.get()
    assert [s for _, s in backend.log].count(State.RETRY) == 2


async def test_chain_chord_and_group_give_their_values(server: Server) -> None:
    chain = await server.send_chain(Chain(add_sig(1, 1), add_sig(5), add_sig(10)))
    assert await chain.get() == 17
    chord = await server.send_chord(Chord(Group(add_sig(1), add_sig(2), add_sig(3)), add_sig()))
    assert await chord.get() == 6
    group = await server.send_group(Group(add_sig(1, 1), add_sig(2, 2)))
    assert [await r.get() for r in group] == [2, 4]


async def test_a_failing_chain_link_stops_the_chain_and_a_failing_member_fails_the_chord(
    server: Server,
) -> None:
    first = Signature(name="add", args=[Arg.of(1)], immutable=True)  # passes no result on (Go's rule)
    chain = await server.send_chain(Chain(first, Signature(name="fail", args=[Arg.of("x")]), add_sig(2)))
    with pytest.raises(TaskFailedError, match="x"):
        await chain.get()
    assert (await chain.results[2].get_state()).state is State.PENDING  # never sent
    fail = Signature(name="fail", args=[Arg.of("member broke")])
    chord = await server.send_chord(Chord(Group(add_sig(1), fail), add_sig()))
    with pytest.raises(TaskFailedError, match="member broke"):
        await chord.get()
    with pytest.raises(TaskFailedError, match="1 of 2 members failed"):
        await chord.callback.get()


async def test_middlewares_see_every_publish_and_run(server: Server) -> None:
    hooks = Hooks()
    server.add_middleware(hooks)
    chain = await server.send_chain(Chain(add_sig(1), add_sig(2)))
    assert await chain.get() == 3
    assert hooks.calls == [
        ("before_publish", "add"),
        ("before_task", "add"),
        ("before_publish", "add"),  # the next link, published by the runner as a worker does
        ("after_publish", "add"),
        ("after_task", "add:SUCCESS"),
        ("before_task", "add"),  # ... and run once the first task is done
        ("after_task", "add:SUCCESS"),
        ("after_publish", "add"),  # the first send returns after its whole chain ran
    ]


async def test_a_task_may_send_a_task_and_wait_for_it(server: Server) -> None:
    result = await server.send_task(Signature(name="nested", args=[Arg.of(4)]))
    assert await result.get() == 9


async def test_chain_links_run_one_after_the_other_not_nested(server: Server) -> None:
    depths: list[int] = []

    @server.task("depth")
    async def depth() -> None:
        depths.append(len(traceback.extract_stack()))

    links = [Signature(name="depth", immutable=True) for _ in range(5)]
    await (await server.send_chain(Chain(*links))).get()
    assert len(depths) == 5
    assert len(set(depths)) == 1  # every link ran at the same stack depth as the first


async def test_an_eta_is_skipped_by_default_and_kept_with_sleep(unique: str) -> None:
    for url, waits in ((f"eager://{unique}", False), (f"eager://{unique}?sleep=true", True)):
        server = Server(Config(broker=url, result_backend=url))

        @server.task("stamp")
        async def stamp() -> str:
            return datetime.now(UTC).isoformat()

        result = await stamp.with_options(countdown=3600 if not waits else 0.2).delay()
        eta = result.signature.eta
        assert eta is not None
        ran_at = datetime.fromisoformat(await result.get())
        assert (ran_at >= eta) is waits


async def test_an_unregistered_name_raises_at_once(server: Server) -> None:
    with pytest.raises(TaskNotRegisteredError, match="nobody"):
        await server.send_task(Signature(name="nobody"))
    dropped = await server.send_task(Signature(name="nobody", ignore_when_task_not_registered=True))
    assert (await dropped.get_state()).state is State.PENDING


async def test_bad_arguments_fail_the_task_and_are_kept_as_a_dead_letter(server: Server, unique: str) -> None:
    result = await server.send_task(Signature(name="add", args=[Arg.of("one")]))
    with pytest.raises(TaskFailedError, match="bad arguments"):
        await result.get()
    [letter] = await server.broker.get_dead_letters(unique)
    assert "bad arguments" in letter.reason
    assert await server.broker.count_pending() == 0
    assert await server.broker.get_pending_tasks() == []
    assert await server.broker.purge() == 0


@pytest.mark.parametrize("url", ["eager", "EAGER", "eager://", "eager://name"])
def test_the_bare_word_and_urls_give_the_eager_drivers(url: str) -> None:
    config = Config(broker=url, result_backend=url)
    assert isinstance(create_broker(config), EagerBroker)
    assert isinstance(create_backend(config), EagerBackend)


async def test_the_bare_word_runs_tasks() -> None:
    server = Server(Config(broker="eager", result_backend="eager"))
    server.register_task("double", lambda n: n * 2)
    result = await server.send_task(Signature(name="double", args=[Arg.of(21)]))
    assert await result.get() == 42


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("eager://?wait=1", "unknown eager:// option 'wait'"),
        ("eager://?sleep=maybe", "sleep must be true or false"),
    ],
)
def test_bad_options_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_broker(Config(broker=url))


async def test_a_worker_cannot_consume_eager(server: Server) -> None:
    worker = server.new_worker("w", run_scheduler=False)
    with pytest.raises(ConfigError, match="no queue for a worker"):
        await worker.start()


async def test_a_broker_without_a_server_says_what_it_needs(config: Config) -> None:
    with pytest.raises(ConfigError, match="needs a Server's tasks"):
        await EagerBroker(config).publish(add_sig(1))


async def test_eager_records_are_apart_from_memory_records(unique: str) -> None:
    eager = create_backend(Config(result_backend=f"eager://{unique}"))
    memory = create_backend(Config(result_backend=f"memory://{unique}"))
    await eager.set_state(TaskState(task_uuid="task_1", task_name="add", state=State.SUCCESS))
    assert await eager.get_state("task_1") is not None
    assert await memory.get_state("task_1") is None


async def test_what_an_inline_run_publishes_is_handed_back_not_queued(server: Server) -> None:
    from machinery_aio.inline import InlineRunner, _Collect

    runner = InlineRunner(server.config, server.registry, server.backend, server.middlewares)
    first = add_sig(1)
    first.uuid = "task_inline_first"
    first.on_success = [add_sig(2)]
    outcome = await runner.run(first)
    assert [s.name for s in outcome.then] == ["add"]
    assert outcome.then[0].python_args() == [2, 1]  # the callback with the result appended
    assert outcome.dead_letter == ""
    collect = _Collect(server.config, "inline://")
    assert await collect.count_pending() == 0
    assert await collect.get_pending_tasks() == []
    assert await collect.purge() == 0
    with pytest.raises(NotImplementedError):
        collect.consumer("q", prefetch=1, tag="t")
