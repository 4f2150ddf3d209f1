"""The Redis result backend: Go's records byte for byte, atomic chords, woken waiters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from machinery_aio import Config, GroupMeta, Signature, State, TaskResult, TaskState
from machinery_aio.drivers.backend import DONE
from machinery_aio.drivers.redis.backend import CHORD_MUTEX, RedisBackend, chord_owner_key
from machinery_aio.drivers.redis.batcher import run_script
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.state_scripts import TRIGGER_CHORD
from machinery_aio.gotime import ZERO_TIME
from tests.conftest import GOLDEN, golden
from tests.support.redis import eventually

GOLDEN_TASK = "task_b6e536c9-a877-493d-8201-6ed9ed1aefd0"
GOLDEN_GROUP = "group_ae13d723-0c02-4101-8392-2d5aff8c4ce4"


@pytest.fixture
async def backend(redis_config: Config, raw: RedisClient) -> Any:
    made = RedisBackend(redis_config)
    yield made
    await made.close()


@pytest.fixture
async def golden_keys(raw: RedisClient) -> Any:
    """The golden vectors use fixed UUIDs: delete them after the test."""
    yield
    for key in (GOLDEN_TASK, GOLDEN_GROUP, "task_c51a4378-15a2-4199-8981-92464cdfed0c"):
        await raw.delete(key)


def signature(uuid: str, name: str = "add") -> Signature:
    return Signature(uuid=uuid, name=name)


async def test_pending_is_stored_as_go_does(backend: RedisBackend, raw: RedisClient, ids: Any) -> None:
    await backend.set_state(TaskState.new(signature(ids(1)), State.PENDING))
    data = await raw.get(ids(1))
    doc = json.loads(data)
    assert list(doc) == ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
    assert doc["TaskUUID"] == ids(1)
    assert doc["State"] == "PENDING"
    assert doc["Results"] is None
    assert doc["TTL"] == 0
    assert doc["CreatedAt"].endswith("Z")
    assert 0 < await raw.ttl(ids(1)) <= 600


@pytest.mark.parametrize(
    ("state", "vector"),
    [
        (State.SUCCESS, "11_task_state_success"),
        (State.FAILURE, "12_task_state_failure"),
    ],
)
async def test_later_states_keep_gos_name_and_created_at(
    backend: RedisBackend, raw: RedisClient, golden_keys: None, state: State, vector: str
) -> None:
    """A Go sender wrote PENDING; our final state is byte for byte what Go's worker writes."""
    await raw.set(GOLDEN_TASK, golden("10_task_state_pending"))
    sig = signature(GOLDEN_TASK)
    await backend.set_state(TaskState.new(sig, State.RECEIVED))
    await backend.set_state(TaskState.new(sig, State.STARTED))
    if state is State.SUCCESS:
        final = TaskState.new(sig, state, results=[TaskResult(type="int64", value=2)])
    else:
        final = TaskState.new(sig, state, error="something went wrong")
    await backend.set_state(final)
    assert await raw.get(GOLDEN_TASK) == golden(vector)
    assert 0 < await raw.ttl(GOLDEN_TASK) <= 600


async def test_tricky_names_errors_and_results_are_spliced_exactly(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    name = 'we"ird\\name/é<>,"State":"SUCCESS"'
    sig = Signature(uuid=ids('q"uote'), name=name)
    pending = TaskState.new(sig, State.PENDING)
    await backend.set_state(pending)
    error = 'bad "thing",\n "CreatedAt":"2001-01-01T00:00:00Z","TTL":0}'
    results = [TaskResult(type="json", value={"CreatedAt": "x", "TaskName": "y", "State": "Z"})]
    nameless = Signature(uuid=sig.uuid, name="")
    for final in (
        TaskState.new(sig, State.SUCCESS, results=results),
        TaskState.new(sig, State.FAILURE, error=error),
        TaskState.new(nameless, State.STARTED),
    ):
        await backend.set_state(final)
        expected = final.model_copy(update={"created_at": pending.created_at, "task_name": name}).to_json()
        assert await raw.get(sig.uuid) == expected


async def test_created_at_is_kept_from_a_record_not_in_gos_key_order(
    backend: RedisBackend, raw: RedisClient, golden_keys: None
) -> None:
    pretty = (GOLDEN / "10_task_state_pending.json").read_bytes()
    shuffled = json.dumps(dict(reversed(json.loads(pretty).items())), indent=1)
    await raw.set(GOLDEN_TASK, shuffled)
    await backend.set_state(TaskState.new(signature(GOLDEN_TASK, ""), State.STARTED))
    stored = TaskState.from_json(await raw.get(GOLDEN_TASK))
    assert stored.task_name == "add"
    assert stored.created_at.isoformat().startswith("2025-01-15T10:29:58.501234")
    assert stored.state is State.STARTED


async def test_many_states_written_at_once(backend: RedisBackend, ids: Any) -> None:
    sigs = [signature(ids(i)) for i in range(300)]
    await backend.set_states([TaskState.new(s, State.PENDING) for s in sigs])
    await asyncio.gather(*(backend.set_state(TaskState.new(s, State.SUCCESS, results=[])) for s in sigs))
    states = await backend.get_states([s.uuid for s in sigs])
    assert all(s is not None and s.is_success() and s.created_at != ZERO_TIME for s in states)
    assert await backend.get_states([]) == []


async def test_an_unreadable_record_gives_a_clear_error(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    await raw.set(ids(1), b"{not json")
    with pytest.raises(ValueError, match="is not a TaskState"):
        await backend.get_state(ids(1))
    assert await backend.get_state(ids("missing")) is None


# -- groups and chords -------------------------------------------------------------------


async def test_group_meta_as_go_stores_it(backend: RedisBackend, raw: RedisClient, ids: Any) -> None:
    await backend.init_group(ids("g", "group"), [ids(1), ids(2)])
    doc = json.loads(await raw.get(ids("g", "group")))
    assert list(doc) == ["GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL"]
    assert doc["TaskUUIDs"] == [ids(1), ids(2)]
    assert doc["ChordTriggered"] is False
    assert 0 < await raw.ttl(ids("g", "group")) <= 600
    meta = await backend.get_group_meta(ids("g", "group"))
    assert isinstance(meta, GroupMeta)
    assert meta.task_uuids == [ids(1), ids(2)]


async def test_the_lock_free_trigger_fires_once_among_many(
    redis_config: Config, raw: RedisClient, ids: Any
) -> None:
    """With ``go_compatible`` off the trigger skips Go's TriggerChordMutex (the contract
    suite covers the default, with it)."""
    redis_config.go_compatible = False
    backends = [RedisBackend(redis_config.model_copy(deep=True)) for _ in range(3)]
    group = ids("g", "group")
    await backends[0].init_group(group, [ids(1)])
    try:
        results = await asyncio.gather(*(backends[i % 3].trigger_chord(group) for i in range(30)))
    finally:
        for b in backends:
            await b.close()
    assert results.count(True) == 1
    assert json.loads(await raw.get(group))["ChordTriggered"] is True
    assert await raw.ttl(chord_owner_key(group)) > 0


@pytest.mark.parametrize("go_compatible", [True, False], ids=["go-mutex", "lock-free"])
async def test_a_trigger_resent_after_a_lost_reply_is_still_the_callers(
    redis_config: Config, raw: RedisClient, ids: Any, go_compatible: bool
) -> None:
    """redis-py sends a command again after a connection error: a trigger Redis ran whose
    reply was lost must still report the trigger to its caller, or the callback would
    never be sent."""
    redis_config.go_compatible = go_compatible
    backend = RedisBackend(redis_config)
    group = ids("g", "group")
    try:
        await backend.init_group(group, [ids(1), ids(2)])
        keys, token = [group, chord_owner_key(group)], "caller-a"
        first = await run_script(raw, TRIGGER_CHORD, keys, [600, token])
        resent = await run_script(raw, TRIGGER_CHORD, keys, [600, token])
        other = await run_script(raw, TRIGGER_CHORD, keys, [600, "caller-b"])
        assert (first, resent, other) == (1, 1, 0)
        assert await backend.trigger_chord(group) is False  # a new caller: someone else won
        meta = await backend.get_group_meta(group)
        assert meta is not None
        assert meta.chord_triggered
    finally:
        await backend.close()


async def test_go_and_python_workers_trigger_each_chord_once(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    """Go's TriggerChord (redsync mutex, GET, check, SET) races ours on 15 chords: the
    Python trigger comes while Go is between its GET and its SET."""
    from machinery_aio.drivers.redis.lock import RedsyncMutex

    async def go_trigger(group: str, read: asyncio.Event) -> bool:
        async with RedsyncMutex(raw, CHORD_MUTEX, min_delay=0.005, max_delay=0.02, tries=2000):
            meta = GroupMeta.from_json(await raw.get(group))
            read.set()
            if meta.chord_triggered:
                return False
            await asyncio.sleep(0.05)  # Go's read-modify-write is not atomic
            meta.chord_triggered = True
            await raw.set(group, meta.to_json(), ex=600)
            return True

    async def race(group: str) -> list[bool]:
        read = asyncio.Event()
        go = asyncio.create_task(go_trigger(group, read))
        await read.wait()
        ours = await backend.trigger_chord(group)
        return [await go, ours]

    groups = [ids(n, "group") for n in range(15)]
    for group in groups:
        await backend.init_group(group, [ids(1)])
    outcomes = await asyncio.gather(*(race(group) for group in groups))
    assert all(sum(pair) == 1 for pair in outcomes)
    assert all([json.loads(await raw.get(g))["ChordTriggered"] for g in groups])


async def test_chord_trigger_keeps_gos_group_bytes(
    backend: RedisBackend, raw: RedisClient, golden_keys: None
) -> None:
    await raw.set(GOLDEN_GROUP, golden("13_group_meta"))
    assert await backend.trigger_chord(GOLDEN_GROUP)
    assert await raw.get(GOLDEN_GROUP) == golden("13_group_meta").replace(
        b'"ChordTriggered":false', b'"ChordTriggered":true'
    )
    assert not await backend.trigger_chord(GOLDEN_GROUP)
    assert not await backend.trigger_chord("group_missing_" + GOLDEN_GROUP)


async def test_chord_trigger_waits_for_a_go_worker_holding_the_mutex(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    """A Go worker holds TriggerChordMutex (redsync): we wait for it, as Go workers do."""
    group = ids("g", "group")
    await backend.init_group(group, [ids(1)])
    assert await raw.set(CHORD_MUTEX, "go-worker-token", nx=True, px=8000)
    try:
        trigger = asyncio.create_task(backend.trigger_chord(group))
        await asyncio.sleep(0.5)
        assert not trigger.done()
        assert json.loads(await raw.get(group))["ChordTriggered"] is False
    finally:
        if await raw.get(CHORD_MUTEX) == b"go-worker-token":
            await raw.delete(CHORD_MUTEX)
    assert await asyncio.wait_for(trigger, 30) is True


# -- waiting for results -------------------------------------------------------------------


async def test_many_waiters_on_one_task_and_on_many(backend: RedisBackend, ids: Any) -> None:
    sigs = [signature(ids(i)) for i in range(50)]
    waiters = [asyncio.create_task(backend.wait_for_state(s.uuid, 30)) for s in sigs]
    waiters += [asyncio.create_task(backend.wait_for_state(sigs[0].uuid, 30)) for _ in range(5)]
    await asyncio.sleep(0.2)
    await backend.set_states([TaskState.new(s, State.FAILURE, error="boom") for s in sigs])
    states = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert all(s.is_failure() and s.error == "boom" for s in states)


async def test_a_state_written_by_go_is_found_without_a_notification(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    waiting = asyncio.create_task(backend.wait_for_state(ids(1), 30))
    await asyncio.sleep(0.2)
    done = TaskState.new(signature(ids(1)), State.SUCCESS, results=[])
    await raw.set(ids(1), done.to_json(), ex=600)  # Go: SET ... EX, no PUBLISH
    state = await asyncio.wait_for(waiting, 30)
    assert state.is_success()


async def test_a_wait_that_timed_out_leaves_no_subscription(backend: RedisBackend, ids: Any) -> None:
    await backend.set_state(TaskState.new(signature(ids(1)), State.STARTED))
    with pytest.raises(TimeoutError, match=ids(1)):
        await backend.wait_for_state(ids(1), 0.3)
    assert not backend.notifier._channels


async def test_waiting_survives_a_dropped_notification_connection(backend: RedisBackend, ids: Any) -> None:
    waiting = asyncio.create_task(backend.wait_for_state(ids(1), 30))
    await eventually(lambda: _subscribed(backend))
    await backend.notifier._pubsub.connection.disconnect()
    await backend.set_state(TaskState.new(signature(ids(1)), State.SUCCESS, results=[]))
    assert (await asyncio.wait_for(waiting, 30)).is_success()


async def _subscribed(backend: RedisBackend) -> bool:
    channels = backend.notifier._channels
    return bool(channels) and all(c.confirmed.done() for c in channels.values())


# -- states written without waiting (set_states_soon) --------------------------------------


async def test_started_written_late_never_replaces_a_final_state(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    sig = signature(ids(1))
    await backend.set_state(TaskState.new(sig, State.PENDING))
    created = json.loads(await raw.get(ids(1)))["CreatedAt"]
    await backend.set_state(TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="int64", value=2)]))
    started = await backend.set_states_soon(
        [TaskState.new(sig, State.RECEIVED), TaskState.new(sig, State.STARTED)]
    )
    assert await started == 0  # kept the SUCCESS
    doc = json.loads(await raw.get(ids(1)))
    assert (doc["State"], doc["Results"], doc["CreatedAt"]) == (
        "SUCCESS",
        [{"Type": "int64", "Value": 2}],
        created,
    )


async def test_started_written_in_order_carries_name_and_creation_time(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    sig = signature(ids(1), name="mul")
    await backend.set_state(TaskState.new(sig, State.PENDING))
    created = json.loads(await raw.get(ids(1)))["CreatedAt"]
    started = await backend.set_states_soon(
        [
            TaskState.new(Signature(uuid=ids(1), name=""), State.RECEIVED),
            TaskState.new(Signature(uuid=ids(1), name=""), State.STARTED),
        ]
    )
    assert await started == 1
    doc = json.loads(await raw.get(ids(1)))
    assert (doc["State"], doc["TaskName"], doc["CreatedAt"]) == ("STARTED", "mul", created)


async def test_a_pending_arriving_after_the_worker_keeps_the_workers_state(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    """The PENDING of send_task travels beside the publish: if the worker's first state is
    stored first, the PENDING only fills in CreatedAt."""
    sig = signature(ids(1))
    await backend.set_states([TaskState.new(sig, State.RECEIVED), TaskState.new(sig, State.STARTED)])
    assert json.loads(await raw.get(ids(1)))["CreatedAt"] == "0001-01-01T00:00:00Z"
    pending = TaskState.new(sig, State.PENDING)
    written = await backend.set_states_soon([pending])
    assert await written == 0
    doc = json.loads(await raw.get(ids(1)))
    assert doc["State"] == "STARTED"
    assert doc["CreatedAt"] == json.loads(pending.to_json())["CreatedAt"]


async def test_a_pending_for_a_resent_uuid_replaces_the_old_run(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    sig = signature(ids(1))
    await backend.set_state(TaskState.new(sig, State.PENDING))
    await backend.set_state(TaskState.new(sig, State.FAILURE, error="boom"))
    written = await backend.set_states_soon([TaskState.new(sig, State.PENDING)])
    assert await written == 1
    assert json.loads(await raw.get(ids(1)))["State"] == "PENDING"


async def test_other_states_are_stored_before_set_states_soon_returns(
    backend: RedisBackend, raw: RedisClient, ids: Any
) -> None:
    """Only PENDING, and RECEIVED with STARTED, are guarded by the script; anything else
    takes the interface's default path (stored, then DONE)."""
    for n, state in enumerate((State.SUCCESS, State.RETRY)):
        sig = signature(ids(n))
        written = await backend.set_states_soon([TaskState.new(sig, state)])
        assert written is DONE
        assert json.loads(await raw.get(ids(n)))["State"] == state.value


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("name", ["add", "", 'q"uo\\te <b>&', "naïve ☃", "tab\tnl\n"])
def test_state_parts_built_directly_match_the_serialized_record(state: State, name: str) -> None:
    from machinery_aio.drivers.redis.backend import _split_state, _state_parts
    from machinery_aio.gotime import now

    for created in (None, now()):
        record = TaskState.new(Signature(uuid="task_1", name=name), state, created_at=created)
        assert _state_parts(record) == _split_state(record.to_json())
