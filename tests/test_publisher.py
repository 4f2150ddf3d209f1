"""Publisher: PENDING then publish, batches, groups, chords, chains, republish, hooks, connecting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest

from machinery_aio import (
    Chain,
    ChainAsyncResult,
    Chord,
    ChordAsyncResult,
    Config,
    ConfigError,
    ConnectionFailedError,
    Group,
    Middleware,
    Signature,
    State,
    TaskState,
)
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.gotime import ZERO_TIME
from machinery_aio.middleware import Middlewares
from machinery_aio.publisher import Publisher
from tests.support.engine import config_fixture, free_port, ints  # noqa: F401 - a fixture
from tests.support.recording import RecordingBackend, RecordingBroker


@pytest.fixture
async def publisher(config: Config) -> AsyncIterator[Publisher]:
    made = Publisher(RecordingBroker(config), RecordingBackend(config))
    yield made
    await made.broker.close()
    await made.backend.close()


def recorded(publisher: Publisher) -> tuple[RecordingBroker, RecordingBackend]:
    assert isinstance(publisher.broker, RecordingBroker)
    assert isinstance(publisher.backend, RecordingBackend)
    return publisher.broker, publisher.backend


# -- single tasks ----------------------------------------------------------------------------------


async def test_send_task_records_pending_then_publishes_gos_json(
    publisher: Publisher, config: Config
) -> None:
    broker, backend = recorded(publisher)
    sig = Signature(name="add", args=ints(1, 2))
    result = await publisher.send_task(sig)
    assert result.task_uuid == sig.uuid
    assert sig.uuid.startswith("task_")
    assert backend.calls == [("set_states", [(sig.uuid, State.PENDING)])]
    [(kind, [body])] = broker.calls
    assert kind == "publish"
    doc = json.loads(body)
    assert (doc["UUID"], doc["Name"], doc["RoutingKey"], doc["Headers"]) == (
        sig.uuid,
        "add",
        config.default_queue,
        {},
    )
    assert doc["Args"] == [
        {"Name": "", "Type": "int64", "Value": 1},
        {"Name": "", "Type": "int64", "Value": 2},
    ]
    state = await result.get_state()
    assert (state.state, state.task_name) == (State.PENDING, "add")
    assert state.created_at != ZERO_TIME


async def test_send_task_fills_uuid_and_headers_and_refuses_bad_input(publisher: Publisher) -> None:
    broker, backend = recorded(publisher)
    sig = Signature(name="anything", args=ints(1))
    result = await publisher.send_task(sig)
    assert sig.uuid.startswith("task_")
    assert result.task_uuid == sig.uuid
    assert sig.headers == {}
    kept = Signature(uuid="task_mine", name="x", headers={"a": "b"}, routing_key="q2")
    await publisher.send_task(kept)
    assert (kept.uuid, kept.headers, kept.routing_key) == ("task_mine", {"a": "b"}, "q2")
    count = len(broker.calls)
    with pytest.raises(ValueError, match="needs a task name"):
        await publisher.send_task(Signature())
    with pytest.raises(TypeError, match="expected a Signature, got dict"):
        await publisher.send_task({"Name": "x"})  # type: ignore[arg-type]
    assert len(broker.calls) == count  # nothing published for bad input
    assert len(backend.calls) == 2  # and no state written


async def test_republish_keeps_the_uuid_and_writes_no_pending(publisher: Publisher) -> None:
    broker, backend = recorded(publisher)
    sig = Signature(uuid="task_same", name="again", headers={}, retry_count=2)
    await publisher.republish(sig)
    [again] = broker.published()
    assert (again.uuid, again.retry_count) == ("task_same", 2)
    assert backend.calls == []


# -- batches and workflows ---------------------------------------------------------------------------


async def test_send_tasks_batches_state_writes_and_publishes(publisher: Publisher) -> None:
    broker, backend = recorded(publisher)
    sigs = [Signature(name="t", args=ints(i)) for i in range(5)]
    results = await publisher.send_tasks(sigs)
    assert [r.task_uuid for r in results] == [s.uuid for s in sigs]
    assert backend.calls == [("set_states", [(s.uuid, State.PENDING) for s in sigs])]
    assert [kind for kind, _ in broker.calls] == ["publish_many"]
    assert await broker.count_pending() == 5
    created = {(await r.get_state()).created_at for r in results}
    assert len(created) == 1  # one creation time for the batch
    with pytest.raises(ValueError, match="needs a task name"):
        await publisher.send_tasks([Signature(name="ok"), Signature()])
    assert len(broker.calls) == 1  # a bad member stops the whole batch before anything is sent


async def test_send_group_writes_meta_and_states_before_publishing(config: Config) -> None:
    log: list[str] = []

    class Backend(RecordingBackend):
        async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
            log.append("init_group")
            await super().init_group(group_uuid, task_uuids)

        async def set_states(self, states: Sequence[TaskState]) -> None:
            log.append("set_states")
            await super().set_states(states)

    class Broker(RecordingBroker):
        async def publish_many(self, signatures: Sequence[Signature]) -> None:
            log.append("publish_many")
            await super().publish_many(signatures)

    publisher = Publisher(Broker(config), Backend(config))
    broker, backend = recorded(publisher)
    group = Group(*(Signature(name="t", args=ints(i)) for i in range(3)))
    results = await publisher.send_group(group)
    assert [r.task_uuid for r in results] == group.task_uuids()
    assert log == ["init_group", "set_states", "publish_many"]
    assert backend.calls == [
        ("init_group", (group.group_uuid, group.task_uuids())),
        ("set_states", [(u, State.PENDING) for u in group.task_uuids()]),
    ]
    meta = await backend.get_group_meta(group.group_uuid)
    assert meta is not None
    assert meta.task_uuids == group.task_uuids()
    for sig in broker.published():
        assert (sig.group_uuid, sig.group_task_count, sig.headers) == (group.group_uuid, 3, {})


async def test_send_group_concurrency_caps_publishes_in_flight(config: Config) -> None:
    in_flight = peak = 0

    class SlowBroker(RecordingBroker):
        async def publish(self, signature: Signature) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            await super().publish(signature)
            in_flight -= 1

    publisher = Publisher(SlowBroker(config), MemoryBackend(config))
    group = Group(*(Signature(name="t", args=ints(i)) for i in range(8)))
    await publisher.send_group(group, send_concurrency=2)
    assert peak == 2
    assert await publisher.broker.count_pending() == 8
    with pytest.raises(ValueError, match="send_concurrency"):
        await publisher.send_group(Group(Signature(name="t")), send_concurrency=-1)
    with pytest.raises(TypeError, match="expected a Group"):
        await publisher.send_group([Signature(name="t")])  # type: ignore[arg-type]


async def test_send_chord_sends_only_the_group(publisher: Publisher) -> None:
    broker, _ = recorded(publisher)
    callback = Signature(name="sum")
    chord = Chord(Group(Signature(name="t", args=ints(1)), Signature(name="t", args=ints(2))), callback)
    result = await publisher.send_chord(chord)
    assert isinstance(result, ChordAsyncResult)
    assert [r.task_uuid for r in result.group_results] == chord.group.task_uuids()
    assert result.callback.task_uuid == callback.uuid
    assert callback.uuid.startswith("chord_")
    assert [s.name for s in broker.published()] == ["t", "t"]
    for member in broker.published():
        assert member.chord_callback is not None
        assert (member.chord_callback.uuid, member.chord_callback.headers) == (callback.uuid, {})
    assert (await result.callback.get_state()).state is State.PENDING  # nothing stored yet
    with pytest.raises(TypeError, match="expected a Chord"):
        await publisher.send_chord(chord.group)  # type: ignore[arg-type]


async def test_send_chain_publishes_only_the_head(publisher: Publisher) -> None:
    broker, backend = recorded(publisher)
    chain = Chain(*(Signature(name=f"link{i}") for i in range(3)))
    result = await publisher.send_chain(chain)
    assert isinstance(result, ChainAsyncResult)
    assert [r.task_uuid for r in result.results] == [s.uuid for s in chain.tasks]
    [head] = broker.published()
    assert head.name == "link0"
    assert head.on_success is not None
    assert head.on_success[0].name == "link1"
    assert backend.calls == [("set_states", [(chain.tasks[0].uuid, State.PENDING)])]
    with pytest.raises(TypeError, match="expected a Chain"):
        await publisher.send_chain(chain.tasks)  # type: ignore[arg-type]


# -- publish middlewares -------------------------------------------------------------------------------


class Stamp(Middleware):
    """Notes every hook call and stamps a header before the publish."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.seen: list[str] = []

    async def before_publish(self, signature: Signature) -> None:
        assert signature.uuid  # set before the hooks run
        assert signature.headers is not None
        signature.headers["stamped"] = "yes"
        self.seen.append(f"before:{signature.name}")

    async def after_publish(self, signature: Signature) -> None:
        held = [*await self.broker.get_pending_tasks(), *await self.broker.get_delayed_tasks()]
        assert signature.uuid in {s.uuid for s in held}  # the broker has it
        self.seen.append(f"after:{signature.name}")


async def test_every_send_path_runs_the_publish_middlewares(config: Config) -> None:
    broker = RecordingBroker(config)
    stamp = Stamp(broker)
    publisher = Publisher(broker, MemoryBackend(config), Middlewares([stamp]))
    await publisher.send_task(Signature(name="one"))
    await publisher.send_tasks([Signature(name="two")])
    await publisher.send_group(Group(Signature(name="three")))
    await publisher.send_group(Group(Signature(name="four")), send_concurrency=1)
    await publisher.send_chord(Chord(Group(Signature(name="five")), Signature(name="callback")))
    await publisher.send_chain(Chain(Signature(name="six"), Signature(name="next")))
    await publisher.republish(Signature(uuid="task_x", name="seven", headers={}, eta=None))
    names = ["one", "two", "three", "four", "five", "six", "seven"]
    assert stamp.seen == [f"{when}:{name}" for name in names for when in ("before", "after")]
    assert all(sig.headers == {"stamped": "yes"} for sig in broker.published())


# -- connecting ------------------------------------------------------------------------------------------


class CountingBroker(MemoryBroker):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.connects = 0

    async def connect(self) -> None:
        await asyncio.sleep(0.01)  # let concurrent senders pile up
        self.connects += 1


async def test_connects_once_for_concurrent_sends_and_again_after_disconnect(config: Config) -> None:
    broker = CountingBroker(config)
    publisher = Publisher(broker, MemoryBackend(config))
    await asyncio.gather(*(publisher.send_task(Signature(name=f"t{i}")) for i in range(5)))
    assert broker.connects == 1
    await publisher.connect()
    assert broker.connects == 1
    publisher.disconnected()
    await publisher.send_task(Signature(name="again"))
    assert broker.connects == 2
    assert await broker.count_pending() == 6


@pytest.mark.parametrize("role", ["broker", "result backend"])
async def test_an_unreachable_server_is_one_clear_error_with_the_password_masked(role: str) -> None:
    pytest.importorskip("redis")
    from machinery_aio.drivers import create_backend, create_broker

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    config = Config(broker="memory://unreachable-test", result_backend="memory://unreachable-test")
    broker = create_broker(config, url) if role == "broker" else MemoryBroker(config)
    backend = create_backend(config, url) if role == "result backend" else MemoryBackend(config)
    publisher = Publisher(broker, backend)
    try:
        async with asyncio.timeout(60):
            with pytest.raises(ConnectionFailedError) as info:
                await publisher.send_task(Signature(name="t"))
    finally:
        await broker.close()
        await backend.close()
    message = str(info.value)
    host_port = url.rsplit("@", 1)[1].split("/")[0]
    assert message.startswith(f"cannot connect to the {role} redis://:****@{host_port}/0: ")
    assert "hunter2" not in message
    assert isinstance(info.value, ConnectionError)
    assert await MemoryBroker(config).count_pending() == 0  # nothing half-sent


async def test_configuration_errors_pass_through_connect_unwrapped(config: Config) -> None:
    class Misconfigured(MemoryBroker):
        async def connect(self) -> None:
            raise ConfigError("bad setting")

    publisher = Publisher(Misconfigured(config), MemoryBackend(config))
    with pytest.raises(ConfigError, match=r"^bad setting$"):
        await publisher.connect()


class _FailingPublish(MemoryBroker):
    async def publish(self, signature: Signature) -> None:
        raise ConnectionError("broker gone")


class _SlowFailingStates(MemoryBackend):
    """Returns from set_states_soon before the write, which then fails (as a Redis write can)."""

    futures: list[asyncio.Future[None]]

    async def set_states_soon(self, states: Sequence[TaskState]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, future.set_exception, ConnectionError("write lost"))
        self.futures.append(future)
        return future


async def test_a_failed_publish_raises_its_error_and_leaves_no_unretrieved_write_error(
    config: Config,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    backend = _SlowFailingStates(config)
    backend.futures = []
    publisher = Publisher(_FailingPublish(config), backend)
    try:
        with pytest.raises(ConnectionError, match="broker gone"):
            await publisher.send_task(Signature(name="add"))
        [written] = backend.futures
        await asyncio.wait([written])
        del written
        backend.futures.clear()
        import gc

        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not [m for m in reported if "never retrieved" in m]
