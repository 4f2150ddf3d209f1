"""Every workflow through a real worker, on a single Redis and on the cluster; bad input;
Go's golden messages pushed by hand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from machinery_aio import (
    Chain,
    Chord,
    Group,
    RetryTaskLater,
    Server,
    Signature,
    State,
    TaskContext,
    TaskFailedError,
    TaskState,
)
from machinery_aio.drivers.redis.broker import RedisBroker
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.keys import QueueKeys
from tests.conftest import golden
from tests.support.redis import eventually, sig


@pytest.fixture
async def app(redis_server: Server, raw: RedisClient) -> AsyncIterator[Server]:
    """The server with tasks registered and a worker running."""
    server = redis_server
    attempts: dict[str, int] = {}

    @server.task("add")
    async def add(*values: int) -> int:
        return sum(values)

    @server.task("multiply")
    def multiply(*values: int) -> int:  # a plain function: runs in the thread pool
        product = 1
        for value in values:
            product *= value
        return product

    @server.task("flaky")
    async def flaky(ctx: TaskContext, fail_times: int) -> str:
        attempts[ctx.task_uuid] = attempts.get(ctx.task_uuid, 0) + 1
        if attempts[ctx.task_uuid] <= fail_times:
            raise RuntimeError(f"attempt {attempts[ctx.task_uuid]} failed")
        return f"ok after {attempts[ctx.task_uuid]}"

    @server.task("later")
    async def later(ctx: TaskContext) -> int:
        attempts[ctx.task_uuid] = attempts.get(ctx.task_uuid, 0) + 1
        if attempts[ctx.task_uuid] < 3:
            raise RetryTaskLater("not yet", 0.2)
        return attempts[ctx.task_uuid]

    @server.task("fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    async with server.new_worker("wf", concurrency=8):
        yield server


async def test_task(app: Server, ids: Any) -> None:
    result = await app.send_task(sig(ids(1), "add", 1, 2))
    assert await result.get(timeout=30) == 3
    state = await result.get_state()
    assert state.state is State.SUCCESS
    assert state.task_name == "add"
    assert state.results is not None
    assert state.results[0].type == "int64"


async def test_failure_and_on_error(app: Server, ids: Any) -> None:
    on_error = sig(ids("err"), "add")  # gets the error text prepended: add("...") fails too
    result = await app.send_task(sig(ids(1), "fail", "bad thing", on_error=[on_error]))
    with pytest.raises(TaskFailedError, match=r"failed: bad thing$"):
        await result.get(timeout=30)
    state = await result.get_state()
    assert state.error == "bad thing"  # Go's err.Error(): the message alone
    handler = app.get_async_result(ids("err"))
    with pytest.raises(TaskFailedError):
        await handler.get(timeout=30)


async def test_group(app: Server, ids: Any) -> None:
    group = Group(*[sig(ids(i), "add", i, i) for i in range(20)], group_uuid=ids("g", "group"))
    results = await app.send_group(group)
    assert [await r.get(timeout=30) for r in results] == [2 * i for i in range(20)]


async def test_chord(app: Server, ids: Any) -> None:
    group = Group(*[sig(ids(i), "add", i, 1) for i in range(6)], group_uuid=ids("g", "group"))
    chord = Chord(group, sig(ids("cb", "chord"), "multiply"))
    result = await app.send_chord(chord)
    assert await result.get(timeout=30) == 720  # 1*2*3*4*5*6


async def test_chain(app: Server, ids: Any) -> None:
    chain = Chain(sig(ids(1), "add", 1, 1), sig(ids(2), "add", 5, 5), sig(ids(3), "multiply", 4))
    result = await app.send_chain(chain)
    assert await result.get(timeout=30) == 48


async def test_retry_with_retry_count(app: Server, ids: Any) -> None:
    result = await app.send_task(sig(ids(1), "flaky", 1, retry_count=2))
    assert await result.get(timeout=30) == "ok after 2"  # retried after Go's 1 s


async def test_retry_task_later(app: Server, ids: Any) -> None:
    result = await app.send_task(sig(ids(1), "later"))
    assert await result.get(timeout=30) == 3


async def test_eta(app: Server, ids: Any) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=0.5)
    result = await app.send_task(sig(ids(1), "add", 2, 2, eta=eta))
    assert (await result.get_state()).state is State.PENDING
    assert await result.get(timeout=30) == 4
    assert datetime.now(UTC) >= eta


async def test_bad_input_is_set_aside_and_the_worker_keeps_going(
    app: Server, raw: RedisClient, ids: Any
) -> None:
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    queue = app.config.default_queue
    not_json = b"{this is not json"
    not_signature = json.dumps({"UUID": ids("nosig"), "Name": 42}).encode()
    bad_args = sig(ids("badargs"), "add", "not a number")
    unknown_type = json.dumps(
        {"UUID": ids("badtype"), "Name": "add", "Args": [{"Type": "complex128", "Value": 1}]}
    ).encode()
    await raw.rpush(queue, not_json, not_signature, bad_args.to_json(), unknown_type)
    good = await app.send_task(sig(ids("good"), "add", 20, 22))
    assert await good.get(timeout=30) == 42

    letters = await eventually(lambda: _letters_when(broker, 4), timeout=30)
    reasons = {letter.body: letter.reason for letter in letters}
    assert "not valid JSON" in reasons[not_json.decode()]
    assert "not a valid Signature" in reasons[not_signature.decode()]
    assert "bad arguments for task add" in reasons[bad_args.to_json().decode()]
    assert "complex128" in reasons[unknown_type.decode()]
    for uuid in (ids("nosig"), ids("badargs"), ids("badtype")):
        state = await app.backend.get_state(uuid)
        assert state is not None
        assert state.state is State.FAILURE
        assert state.error
    assert await raw.llen(queue) == 0


async def _letters_when(broker: RedisBroker, count: int) -> Any:
    letters = await broker.get_dead_letters()
    return letters if len(letters) >= count else None


# -- Go's golden messages, pushed by hand ----------------------------------------------------

GOLDEN_UUIDS = (
    "task_baec41c6-2eb7-429f-b1a2-1a9e5d5919ca",
    "task_68c617c7-799f-4b62-b29f-724b176af8bc",
    "task_f9aa6696-2a48-447e-a451-e64e1239caea",
    "task_b04bbfe9-536b-4f90-8da0-0fe64ee23890",
    "task_b6e536c9-a877-493d-8201-6ed9ed1aefd0",
    "task_c51a4378-15a2-4199-8981-92464cdfed0c",
    "group_ae13d723-0c02-4101-8392-2d5aff8c4ce4",
    "chord_3cb95e1c-1469-4b4a-bded-313f7e582849",
)


@pytest.fixture
async def golden_cleanup(raw: RedisClient) -> AsyncIterator[None]:
    yield
    for key in GOLDEN_UUIDS:
        await raw.delete(key)


async def test_golden_plain_task(app: Server, raw: RedisClient, golden_cleanup: None) -> None:
    uuid = GOLDEN_UUIDS[0]
    await raw.rpush(app.config.default_queue, golden("01_plain_task_int64_eta"))
    state = await app.backend.wait_for_state(uuid, 30)
    assert state.value == 3
    stored = json.loads(await raw.get(uuid))
    assert list(stored) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
    assert stored["Results"] == [{"Type": "int64", "Value": 3}]
    assert stored["TaskName"] == "add"
    assert stored["Error"] == ""
    assert stored["TTL"] == 0


async def test_golden_chain(app: Server, raw: RedisClient, golden_cleanup: None) -> None:
    await raw.rpush(app.config.default_queue, golden("02_chain_onsuccess_nesting"))
    state = await app.backend.wait_for_state(GOLDEN_UUIDS[3], 30)
    assert state.value == 48  # multiply(4, add(5, 5, add(1, 1)))
    assert json.loads(await raw.get(GOLDEN_UUIDS[3]))["Results"] == [{"Type": "int64", "Value": 48}]


async def test_golden_chord_member_finishing_after_a_go_worker(
    app: Server, raw: RedisClient, golden_cleanup: None
) -> None:
    """Go's sender wrote the GroupMeta and PENDING states; a Go worker finished the other
    member; the Python worker runs the last member and sends the callback once."""
    first, second, group, callback = GOLDEN_UUIDS[4], GOLDEN_UUIDS[5], GOLDEN_UUIDS[6], GOLDEN_UUIDS[7]
    await raw.set(group, golden("13_group_meta"), ex=600)
    await raw.set(first, golden("10_task_state_pending"), ex=600)
    done_by_go = golden("11_task_state_success").replace(first.encode(), second.encode())
    await raw.set(second, done_by_go, ex=600)
    await raw.rpush(app.config.default_queue, golden("03_chord_member"))
    state = await app.backend.wait_for_state(callback, 30)
    assert state.value == 4  # multiply(2, 2)
    assert json.loads(await raw.get(group))["ChordTriggered"] is True
    assert await raw.get(first) == golden("11_task_state_success")


async def test_state_sequence_as_go_writes_it(app: Server, raw: RedisClient, ids: Any) -> None:
    """Every intermediate state keeps TaskName and CreatedAt, as Go's Redis backend does."""
    result = await app.send_task(sig(ids(1), "add", 1))
    pending = TaskState.from_json(await raw.get(ids(1)))
    await result.get(timeout=30)
    final = TaskState.from_json(await raw.get(ids(1)))
    assert final.created_at == pending.created_at
    assert final.task_name == "add"


async def test_signatures_are_sent_go_shaped(app: Server, raw: RedisClient, ids: Any) -> None:
    queue = f"{app.config.default_queue}_idle"  # no worker: the message stays
    await app.send_task(Signature(uuid=ids(1), name="add", routing_key=queue))
    [body] = await raw.lrange(queue, 0, -1)
    assert body == (
        b'{"UUID":"'
        + ids(1).encode()
        + b'","Name":"add","RoutingKey":"'
        + queue.encode()
        + b'","ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":null,"Headers":{},'
        b'"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,'
        b'"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"",'
        b'"StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}'
    )


async def test_dropped_connections_lose_nothing(
    redis_url: str, unique: str, raw: RedisClient, ids: Any
) -> None:
    """Our own connections are killed again and again (CLIENT KILL by our client name)
    while tasks run: the worker, the backend and the waiters reconnect; every task ends."""
    from tests.drivers.redis.conftest import make_config

    config = make_config(redis_url, unique, client_name=f"{unique}-conn")
    server = Server(config)

    @server.task("slow_add")
    async def slow_add(a: int, b: int) -> int:
        import asyncio

        await asyncio.sleep(0.01)
        return a + b

    async def kill_ours() -> int:
        killed = 0
        await raw.initialize()
        nodes = raw.get_primaries() if hasattr(raw, "get_primaries") else [None]
        for node in nodes:
            target = {"target_nodes": node} if node is not None else {}
            clients = await raw.client_list(**target)
            for client in clients:
                if client.get("name") == f"{unique}-conn":
                    try:
                        await raw.client_kill_filter(_id=client["id"], **target)
                        killed += 1
                    except Exception:
                        pass  # it went away by itself
        return killed

    import asyncio

    try:
        async with server.new_worker("flaky-net", concurrency=5):
            results = await server.send_tasks([sig(ids(i), "slow_add", i, 1) for i in range(60)])
            killed = 0
            for _ in range(5):
                await asyncio.sleep(0.1)
                killed += await kill_ours()
            assert killed > 0
            values = [await result.get(timeout=60) for result in results]
            assert values == [i + 1 for i in range(60)]
        queue = config.default_queue
        assert await raw.llen(queue) == 0
        assert not [k async for k in raw.scan_iter(match=QueueKeys(queue).processing("*"))]
    finally:
        await server.close()
