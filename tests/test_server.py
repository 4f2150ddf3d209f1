"""Server: registry, typed task handles, sending through its publisher, result handles, workers.

What the publisher itself does (PENDING, batches, workflows, hooks) is in test_publisher.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from machinery_aio import (
    AsyncResult,
    Chain,
    Chord,
    Config,
    Group,
    Server,
    Signature,
    State,
    Task,
    TaskContext,
    TaskFailedError,
    TaskNotRegisteredError,
    TaskResult,
    TaskState,
)
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.gotime import ZERO_TIME
from machinery_aio.publisher import Publisher
from tests.support.engine import config_fixture, server_fixture  # noqa: F401 - fixtures
from tests.support.recording import RecordingBackend, RecordingBroker


def recorded(server: Server) -> tuple[RecordingBroker, RecordingBackend]:
    assert isinstance(server.broker, RecordingBroker)
    assert isinstance(server.backend, RecordingBackend)
    return server.broker, server.backend


# -- registry ------------------------------------------------------------------------------------


def test_register_and_look_up(server: Server) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    def mul(a: int, b: int) -> int:
        return a * b

    server.register_task("add", add)
    server.register_tasks({"mul": mul, "also_add": add})
    assert server.is_task_registered("add")
    assert not server.is_task_registered("sub")
    assert server.get_registered_task("mul").fn is mul
    assert server.get_registered_task("add").is_async
    assert not server.get_registered_task("mul").is_async
    assert server.get_registered_task_names() == ["add", "also_add", "mul"]
    with pytest.raises(TaskNotRegisteredError, match="task 'sub' is not registered") as info:
        server.get_registered_task("sub")
    assert isinstance(info.value, KeyError)
    server.register_task("add", mul)  # a later registration replaces
    assert server.get_registered_task("add").fn is mul


def test_registration_refuses_bad_tasks(server: Server) -> None:
    with pytest.raises(TypeError, match="task 'x' must be callable, got int"):
        server.register_task("x", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty name"):
        server.register_task("", print)
    with pytest.raises(ValueError, match="time_limit must be positive"):
        server.register_task("x", print, time_limit=0)
    assert not server.is_task_registered("x")


def test_task_decorator_returns_a_typed_handle(server: Server) -> None:
    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task()
    def multiply(a: int, b: int) -> int:
        return a * b

    assert isinstance(add, Task)
    assert add.name == "add"
    assert multiply.name == "multiply"
    assert server.is_task_registered("multiply")
    assert multiply(3, 4) == 12  # calling the handle calls the function here
    assert add.fn.__name__ == "add"
    assert repr(add) == "<Task add>"


def test_signature_infers_go_types_from_annotations(server: Server) -> None:
    @server.task("mixed")
    async def mixed(
        ctx: TaskContext, a: int, b: float, c: str, d: list[str], e: bytes, f: dict[str, int], g: bool = False
    ) -> None:
        return None

    sig = mixed.signature(1, 2, "x", [], b"\x01", {"k": 1})
    assert [(a.type, a.value) for a in sig.args or ()] == [
        ("int64", 1),
        ("float64", 2.0),
        ("string", "x"),
        ("[]string", []),
        ("[]byte", "AQ=="),
        ("json", {"k": 1}),
        ("bool", False),
    ]
    assert sig.name == "mixed"
    assert sig.uuid == ""


def test_keyword_arguments_are_bound_to_positions(server: Server) -> None:
    @server.task("f")
    async def f(a: int, b: int = 10, *rest: int) -> int:
        return a

    assert [a.value for a in f.signature(b=2, a=1).args or ()] == [1, 2]
    assert [a.value for a in f.signature(1).args or ()] == [1, 10]  # defaults travel too
    assert [a.value for a in f.signature(1, 2, 3, 4).args or ()] == [1, 2, 3, 4]


def test_keyword_only_parameters(server: Server) -> None:
    @server.task("k")
    async def k(a: int, *, verbose: bool = False) -> int:
        return a

    assert [a.value for a in k.signature(1).args or ()] == [1]  # default stays on the worker
    with pytest.raises(TypeError, match=r"keyword-only parameters cannot travel.*verbose"):
        k.signature(1, verbose=True)


def test_a_required_keyword_only_parameter_is_refused(server: Server) -> None:
    @server.task("r")
    async def r(a: int, *, mode: str) -> int:
        return a

    with pytest.raises(TypeError, match="task 'r': missing a required argument: 'mode'"):
        r.signature(1)  # every positional parameter given: still checked


def test_wrong_calls_are_refused_before_sending(server: Server) -> None:
    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="task 'add': missing a required argument: 'b'"):
        add.signature(1)
    with pytest.raises(TypeError, match="task 'add': too many positional arguments"):
        add.signature(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="task 'add': got an unexpected keyword argument 'c'"):
        add.signature(1, 2, c=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="NaN or infinity"):
        add.signature(1, float("nan"))  # type: ignore[arg-type]


def test_with_options_sets_signature_fields(server: Server) -> None:
    @server.task("add", retry_count=1)
    async def add(a: int, b: int) -> int:
        return a + b

    assert add.signature(1, 2).retry_count == 1
    handle = add.with_options(
        routing_key="special",
        retry_count=3,
        retry_timeout=2,
        priority=5,
        immutable=True,
        headers={"h": "v"},
        ignore_when_task_not_registered=True,
        broker_message_group_id="g",
        stop_task_deletion_on_error=True,
    )
    sig = handle.signature(1, 2)
    assert (sig.routing_key, sig.retry_count, sig.retry_timeout, sig.priority) == ("special", 3, 2, 5)
    assert sig.immutable
    assert sig.headers == {"h": "v"}
    assert sig.ignore_when_task_not_registered
    assert sig.stop_task_deletion_on_error
    assert sig.broker_message_group_id == "g"
    assert add.signature(1, 2).routing_key == ""  # the original handle is unchanged
    with pytest.raises(ValueError, match="priority must be 0 to 255"):
        add.with_options(priority=256)


def test_countdown_and_eta(server: Server) -> None:
    @server.task("t")
    async def t() -> None:
        return None

    before = datetime.now(UTC)
    sig = t.with_options(countdown=30).signature()
    assert sig.eta is not None
    assert before + timedelta(seconds=30) <= sig.eta <= datetime.now(UTC) + timedelta(seconds=30)
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    assert t.with_options(eta=eta).signature().eta == eta
    with pytest.raises(ValueError, match="eta or countdown, not both"):
        t.with_options(eta=eta, countdown=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        t.with_options(eta=datetime(2030, 1, 1))


# -- sending ---------------------------------------------------------------------------------------


async def test_delay_records_pending_and_publishes_gos_json(server: Server) -> None:
    broker, backend = recorded(server)

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    result = await add.delay(1, 2)
    assert isinstance(result, AsyncResult)
    uuid = result.task_uuid
    assert uuid.startswith("task_")
    assert backend.calls == [("set_states", [(uuid, State.PENDING)])]
    [body] = broker.calls[0][1]
    doc = json.loads(body)
    assert doc["UUID"] == uuid
    assert doc["Name"] == "add"
    assert doc["RoutingKey"] == server.config.default_queue
    assert doc["Headers"] == {}
    assert doc["Args"] == [
        {"Name": "", "Type": "int64", "Value": 1},
        {"Name": "", "Type": "int64", "Value": 2},
    ]
    state = await result.get_state()
    assert state.state is State.PENDING
    assert state.task_name == "add"
    assert state.created_at != ZERO_TIME


async def test_apply_async_is_celery_style(server: Server) -> None:
    broker, _ = recorded(server)

    @server.task("add")
    async def add(a: int, b: int) -> int:
        return a + b

    await add.apply_async((1,), {"b": 5}, countdown=60, routing_key="elsewhere")
    [sig] = broker.published()
    assert sig.python_args() == [1, 5]
    assert sig.routing_key == "elsewhere"
    assert sig.eta is not None
    assert [d.name for d in await server.broker.get_delayed_tasks()] == ["add"]
    await add.apply_async([2, 3])
    assert broker.published()[-1].python_args() == [2, 3]
    with pytest.raises(TypeError, match="unexpected keyword argument 'retries'"):
        await add.apply_async((1, 2), retries=3)


async def test_the_server_sends_through_one_publisher_on_its_own_drivers(server: Server) -> None:
    broker, backend = recorded(server)
    publisher = server.publisher
    assert isinstance(publisher, Publisher)
    assert (publisher.broker, publisher.backend, publisher.middlewares) == (
        broker,
        backend,
        server.middlewares,
    )
    group = Group(Signature(name="a"), Signature(name="b"))
    await server.send_task(Signature(name="one"))
    await server.send_tasks([Signature(name="two")])
    await server.send_group(group)
    await server.send_chord(Chord(Group(Signature(name="c")), Signature(name="cb")))
    await server.send_chain(Chain(Signature(name="d"), Signature(name="e")))
    assert [s.name for s in broker.published()] == ["one", "two", "a", "b", "c", "d"]
    assert await backend.get_group_meta(group.group_uuid) is not None


async def test_close_then_send_connects_again(config: Config) -> None:
    connects: list[str] = []

    class Broker(MemoryBroker):
        async def connect(self) -> None:
            connects.append(self.url)

    server = Server(config, broker=Broker(config))
    async with server:
        await server.send_task(Signature(name="first"))
    assert len(connects) == 1
    await server.send_task(Signature(name="after close"))
    assert len(connects) == 2
    await server.close()


# -- result handles --------------------------------------------------------------------------------


async def test_async_result_reads_states_written_by_anyone(server: Server) -> None:
    sig = Signature(name="t")
    result = await server.send_task(sig)
    assert await result.touch() is None
    await server.backend.set_state(TaskState.new(sig, State.STARTED))
    assert await result.touch() is None
    results = [TaskResult(type="int64", value=3), TaskResult(type="string", value="x")]
    await server.backend.set_state(TaskState.new(sig, State.SUCCESS, results=results))
    assert await result.touch() == (3, "x")
    assert await result.get(timeout=5) == (3, "x")
    same = server.get_async_result(sig.uuid)
    assert (await same.get_state()).is_success()
    unknown = await server.get_async_result("task_unknown", "name").get_state()
    assert (unknown.state, unknown.task_uuid, unknown.task_name) == (State.PENDING, "task_unknown", "name")
    assert repr(result) == f"<AsyncResult t {sig.uuid}>"


async def test_async_result_raises_the_tasks_error_and_times_out(server: Server) -> None:
    sig = Signature(name="boom")
    result = await server.send_task(sig)
    with pytest.raises(TimeoutError):
        await result.get(timeout=0.01)
    await server.backend.set_state(TaskState.new(sig, State.FAILURE, error="ValueError: bad"))
    with pytest.raises(TaskFailedError) as info:
        await result.get(timeout=5)
    assert info.value.error == "ValueError: bad"
    assert info.value.task_uuid == sig.uuid
    assert info.value.task_name == "boom"
    assert str(info.value) == f"task boom {sig.uuid} failed: ValueError: bad"
    with pytest.raises(TaskFailedError):
        await result.touch()


class Point(BaseModel):
    x: int
    y: int


async def test_delay_result_is_converted_to_the_return_annotation(server: Server) -> None:
    @server.task("point")
    async def point(x: int) -> Point:
        return Point(x=x, y=x)

    result = await point.delay(2)
    point_json = TaskResult(type="json", value={"x": 2, "y": 2})
    await server.backend.set_state(TaskState.new(result.signature, State.SUCCESS, results=[point_json]))
    value = await result.get(timeout=5)
    assert value == Point(x=2, y=2)


async def test_chain_and_chord_results_time_out_clearly(server: Server) -> None:
    chain = await server.send_chain(Chain(Signature(name="a"), Signature(name="b")))
    with pytest.raises(TimeoutError, match=r"chain did not complete within 0\.01 s"):
        await chain.get(timeout=0.01)
    chord = await server.send_chord(Chord(Group(Signature(name="a")), Signature(name="cb")))
    with pytest.raises(TimeoutError, match=r"chord did not complete within 0\.01 s"):
        await chord.get(timeout=0.01)
    states = await chain.get_states()
    assert [s.state for s in states] == [State.PENDING, State.PENDING]


async def test_server_context_and_workers(unique: str) -> None:
    config = Config(
        broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=f"{unique}_q"
    )
    async with Server(config) as server:
        assert "memory://" in repr(server)
        worker = server.new_worker("w1", concurrency=5)
        assert (worker.tag, worker.concurrency, worker.queue) == ("w1", 5, f"{unique}_q")
        custom = server.new_custom_queue_worker("w2", 2, "other")
        assert (custom.tag, custom.concurrency, custom.queue) == ("w2", 2, "other")
        assert server.new_worker().tag.startswith("worker-")
        with pytest.raises(ValueError, match="concurrency must be 0"):
            server.new_worker(concurrency=-1)
        with pytest.raises(ValueError, match="grace_period"):
            server.new_worker(grace_period=-1)
        with pytest.raises(TypeError, match="fetch_timeout"):
            server.new_worker(fetch_timeout=1.0)  # each broker decides how long a fetch waits


async def test_a_chain_longer_than_pydantic_parses_at_once_runs_every_link(unique: str) -> None:
    config = Config(
        broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=f"{unique}_q"
    )
    server = Server(config)

    @server.task("inc")
    async def inc(x: int) -> int:
        return x + 1

    links = [inc.signature(0), *(Signature(name="inc") for _ in range(149))]
    async with server, server.new_worker("deep", concurrency=4):
        chain = await server.send_chain(Chain(*links))
        assert await chain.get(timeout=60) == 150
