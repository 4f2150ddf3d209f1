"""Memcache: Go's keys and JSON both ways, expiry settings, several servers, Go's Lock flag,
bad input, a restarted server, and every workflow with the memory and the Redis broker."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

import aiomcache
import pytest

from machinery_aio import Config, Signature, State, TaskResult, TaskState
from machinery_aio.config import ConfigError
from machinery_aio.drivers.memcache.backend import MemcacheBackend, chord_owner_key
from tests.conftest import golden
from tests.support.backend_workflows import BROKERS, broker_config, check_workflows, running
from tests.support.memcache import PrivateMemcached, remaining_ttl

URL = "memcache://127.0.0.1:11211"
GO_TASK = "task_b6e536c9-a877-493d-8201-6ed9ed1aefd0"
GO_OTHER = "task_c51a4378-15a2-4199-8981-92464cdfed0c"
GO_GROUP = "group_ae13d723-0c02-4101-8392-2d5aff8c4ce4"
STATE_KEYS = ["TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"]
GROUP_KEYS = ["GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL"]


def go_record(name: str, unique: str) -> tuple[bytes, dict[str, str]]:
    """A golden record with the test's own UUIDs in place of Go's."""
    names = {GO_TASK: f"task_{unique}_1", GO_OTHER: f"task_{unique}_2", GO_GROUP: f"group_{unique}_1"}
    data = golden(name).decode()
    for old, new in names.items():
        data = data.replace(old, new)
    return data.encode(), names


@pytest.mark.parametrize("broker", BROKERS)
async def test_workflows_store_gos_json_under_the_bare_uuids(
    broker: str, unique: str, raw: aiomcache.Client, used: set[str]
) -> None:
    async with running(broker_config(broker, URL, unique)) as server:
        used.update(await check_workflows(server, unique))
    state = json.loads(await raw.get(f"task_{unique}_1".encode()) or b"null")
    assert list(state) == STATE_KEYS
    assert (state["State"], state["Results"], state["TaskName"]) == (
        "SUCCESS",
        [{"Type": "int64", "Value": 3}],
        "add",
    )
    failed = json.loads(await raw.get(f"task_{unique}_2".encode()) or b"null")
    assert (failed["State"], failed["Results"], failed["Error"]) == ("FAILURE", None, "no")
    meta = json.loads(await raw.get(f"group_{unique}_2".encode()) or b"null")
    assert list(meta) == GROUP_KEYS
    assert meta["ChordTriggered"] is True
    assert meta["Lock"] is False
    assert meta["TaskUUIDs"] == [f"task_{unique}_c{i}" for i in range(10)]


async def test_go_records_are_read_and_the_chord_flag_is_set_in_gos_json(
    backend: MemcacheBackend, raw: aiomcache.Client, unique: str, used: set[str]
) -> None:
    success, names = go_record("11_task_state_success", unique)
    meta_json, _ = go_record("13_group_meta", unique)
    task, group = names[GO_TASK], names[GO_GROUP]
    other = names[GO_OTHER]
    used.update(names.values())
    await raw.set(task.encode(), success)
    await raw.set(group.encode(), meta_json)
    state = await backend.get_state(task)
    assert state is not None
    assert (state.state, state.value, state.task_name) == (State.SUCCESS, 2, "add")
    meta = await backend.get_group_meta(group)
    assert meta is not None
    assert meta.task_uuids == [task, other]
    assert not await backend.group_completed(group, 2)
    failure, _ = go_record("12_task_state_failure", unique)
    await raw.set(other.encode(), failure.replace(task.encode(), other.encode()))
    assert await backend.group_completed(group, 2)
    assert await backend.trigger_chord(group)
    assert not await backend.trigger_chord(group)
    stored = json.loads(await raw.get(group.encode()) or b"null")
    expected = json.loads(meta_json)
    expected["ChordTriggered"] = True
    assert stored == expected  # Go's JSON with only the flag changed


async def test_python_states_are_gos_json_byte_for_byte(
    backend: MemcacheBackend, raw: aiomcache.Client, unique: str, used: set[str]
) -> None:
    uuid = f"task_{unique}_1"
    used.add(uuid)
    sig = Signature(uuid=uuid, name="add")
    state = TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="int64", value=3)])
    await backend.set_state(state)
    assert await raw.get(uuid.encode()) == state.to_json()
    # a later state without a name keeps the stored one (Go would store "")
    await backend.set_state(TaskState(task_uuid=uuid, state=State.RETRY))
    stored = json.loads(await raw.get(uuid.encode()) or b"null")
    assert (stored["State"], stored["TaskName"]) == ("RETRY", "add")


@pytest.mark.parametrize(
    ("expire_in", "expected"),
    [(0, 3600), (600, 600), (40 * 86400, 40 * 86400)],
    ids=["default-3600", "600s", "40-days-absolute"],
)
async def test_records_get_results_expire_in(
    raw: aiomcache.Client, unique: str, used: set[str], expire_in: int, expected: int
) -> None:
    backend = MemcacheBackend(Config(result_backend=URL, results_expire_in=expire_in))
    try:
        if expire_in > 30 * 86400:  # memcached reads it as a Unix time
            assert abs(backend.exptime() - (time.time() + expire_in)) < 5
        else:
            assert backend.exptime() == expected
        uuid, group = f"task_{unique}_1", f"group_{unique}_1"
        used.update((uuid, group))
        await backend.set_state(TaskState.new(Signature(uuid=uuid, name="add"), State.PENDING))
        await backend.init_group(group, [uuid])
        for key in (uuid, group):
            assert expected - 5 <= await remaining_ttl(key) <= expected + 2  # memcached rounds its clock
    finally:
        await backend.close()


async def test_keys_live_on_the_server_gos_gomemcache_picks(unique: str) -> None:
    second = PrivateMemcached()
    third = PrivateMemcached()
    second.start()
    third.start()
    url = f"memcache://127.0.0.1:{second.port},127.0.0.1:{third.port}"
    backend = MemcacheBackend(Config(result_backend=url))
    clients = [aiomcache.Client("127.0.0.1", p) for p in (second.port, third.port)]
    try:
        uuids = [f"task_{unique}_{i}" for i in range(20)]
        sigs = [Signature(uuid=u, name="add") for u in uuids]
        await backend.set_states([TaskState.new(s, State.PENDING) for s in sigs])
        for uuid in uuids:
            where = zlib.crc32(uuid.encode()) % 2  # Go: crc32.ChecksumIEEE(key) % len(servers)
            assert await clients[where].get(uuid.encode()) is not None
            assert await clients[1 - where].get(uuid.encode()) is None
        states = await backend.get_states(list(reversed(uuids)))
        assert [s.task_uuid for s in states if s is not None] == list(reversed(uuids))
    finally:
        await backend.close()
        for client in clients:
            await client.close()
        second.stop()
        third.stop()


async def test_the_chord_waits_for_a_go_workers_lock_flag(
    backend: MemcacheBackend, raw: aiomcache.Client, unique: str, used: set[str]
) -> None:
    meta_json, names = go_record("13_group_meta", unique)
    group = names[GO_GROUP]
    used.add(group)
    locked = meta_json.replace(b'"Lock":false', b'"Lock":true')
    await raw.set(group.encode(), locked)
    trigger = asyncio.create_task(backend.trigger_chord(group))
    await asyncio.sleep(0.1)
    assert not trigger.done()  # waiting while a Go worker holds its flag
    await raw.set(group.encode(), meta_json)  # the Go worker lets go without triggering
    assert await trigger is True
    assert await raw.get(chord_owner_key(group).encode()) is not None


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memcache://", "names no server"),
        ("memcache://user:s3cret@127.0.0.1:11211", "no authentication"),
        ("memcache://127.0.0.1:notaport", "bad server"),
    ],
)
def test_a_bad_url_is_a_config_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        MemcacheBackend(Config(result_backend=url))
    assert "s3cret" not in str(caught.value)


async def test_a_uuid_memcached_cannot_hold_is_refused_before_anything_is_sent(
    backend: MemcacheBackend,
) -> None:
    for uuid in ("task with space", "task_" + "x" * 250, "task_\n"):
        with pytest.raises(ValueError, match="cannot be a memcached key"):
            await backend.set_state(TaskState.new(Signature(uuid=uuid, name="add"), State.PENDING))
        with pytest.raises(ValueError, match="cannot be a memcached key"):
            await backend.get_state(uuid)


async def test_a_record_that_is_not_a_state_is_reported_by_key(
    backend: MemcacheBackend, raw: aiomcache.Client, unique: str, used: set[str]
) -> None:
    uuid, group = f"task_{unique}_1", f"group_{unique}_1"
    used.update((uuid, group))
    await raw.set(uuid.encode(), b"not json")
    await raw.set(group.encode(), b'{"GroupUUID": 5}')
    with pytest.raises(ValueError, match=f"{uuid}.*not a TaskState"):
        await backend.get_state(uuid)
    with pytest.raises(ValueError, match=f"{group}.*not a GroupMeta"):
        await backend.get_group_meta(group)


async def test_a_result_too_big_for_memcached_is_a_clear_error_and_keeps_the_last_state(
    backend: MemcacheBackend, unique: str, used: set[str]
) -> None:
    uuid = f"task_{unique}_1"
    used.add(uuid)
    sig = Signature(uuid=uuid, name="add")
    await backend.set_state(TaskState.new(sig, State.STARTED))
    huge = TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="string", value="x" * 2_000_000)])
    with pytest.raises(RuntimeError, match=f"memcached refused to store {uuid}"):
        await backend.set_state(huge)
    stored = await backend.get_state(uuid)
    assert stored is not None
    assert stored.state is State.STARTED


# -- a restarted server ------------------------------------------------------------------------


async def test_a_restarted_memcached_delays_writes_and_waiters_but_loses_neither(unique: str) -> None:
    """memcached keeps nothing across a restart (it is a cache): what is written after it
    comes back is stored, and a waiter that was waiting gets it."""
    server = PrivateMemcached()
    server.start()
    writer = MemcacheBackend(Config(result_backend=server.url))
    waiter = MemcacheBackend(Config(result_backend=server.url))
    try:
        sig = Signature(uuid=f"task_{unique}_1", name="add")
        await writer.set_state(TaskState.new(sig, State.STARTED))
        waiting = asyncio.create_task(waiter.wait_for_state(sig.uuid, 60))
        await asyncio.sleep(0.2)
        server.stop()
        final = TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="int64", value=7)])
        writing = asyncio.create_task(writer.set_state(final))  # retries while it is down
        await asyncio.sleep(0.5)
        assert not writing.done()
        assert not waiting.done()
        server.start()
        async with asyncio.timeout(60):  # a hang guard
            await writing
            state = await waiting
        assert (state.state, state.value) == (State.SUCCESS, 7)
    finally:
        await writer.close()
        await waiter.close()
        server.stop()


async def test_an_unreachable_server_is_retried_then_raised(
    unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from machinery_aio.drivers import retrying
    from tests.support.memcache import free_port

    monkeypatch.setattr(retrying, "OUTAGE_BUDGET", 0.5)
    backend = MemcacheBackend(Config(result_backend=f"memcache://127.0.0.1:{free_port()}"))
    try:
        with caplog.at_level("WARNING", "machinery_aio"), pytest.raises(OSError):
            await backend.get_state(f"task_{unique}_1")
    finally:
        await backend.close()
    assert "retrying until the server is back" in caplog.text


async def test_states_of_one_task_apart_in_a_batch_are_stored_in_order(
    backend: MemcacheBackend, unique: str, used: set[str]
) -> None:
    first, second = (Signature(uuid=f"task_{unique}_{n}", name="add") for n in (1, 2))
    used.update((first.uuid, second.uuid))
    await backend.set_states(
        [
            TaskState.new(first, State.PENDING),
            TaskState.new(second, State.PENDING),
            TaskState(task_uuid=first.uuid, state=State.STARTED),
        ]
    )
    one, two = await backend.get_states([first.uuid, second.uuid])
    assert one is not None
    assert two is not None
    assert (one.state, one.task_name, two.state) == (State.STARTED, "add", State.PENDING)
