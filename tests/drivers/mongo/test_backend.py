"""MongoDB: Go's documents both ways, the database a URL means, the TTL index and expiry,
the chord under concurrent callers, change streams, URL options, bad input, a restarted
server, and every workflow with the memory and the Redis broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Int64
from pymongo.asynchronous.database import AsyncDatabase

from machinery_aio import Config, Signature, State, TaskResult, TaskState
from machinery_aio.config import ConfigError, MongoDBConfig
from machinery_aio.drivers.mongo.backend import MongoBackend
from machinery_aio.drivers.mongo.documents import task_update
from tests.support.backend_workflows import BROKERS, broker_config, check_workflows, running
from tests.support.mongo import PrivateMongo, delete_documents

URL = "mongodb://127.0.0.1:27017/machinery_aio_tests"
NOW = datetime.now(UTC)
DB = AsyncDatabase[dict[str, Any]]


def near(when: Any, expected: datetime) -> bool:
    return isinstance(when, datetime) and abs(when - expected) < timedelta(seconds=10)


@pytest.mark.parametrize("broker", BROKERS)
async def test_workflows_store_gos_documents(broker: str, unique: str, db: DB) -> None:
    async with running(broker_config(broker, URL, unique)) as server:
        await check_workflows(server, unique)
    doc = await db.tasks.find_one({"_id": f"task_{unique}_1"})
    assert doc is not None
    assert {"_id", "state", "task_name", "created_at", "results", "error", "delete_at"} <= set(doc)
    assert (doc["state"], doc["task_name"], doc["results"]) == (
        "SUCCESS",
        "add",
        [{"type": "int64", "value": 3}],
    )
    assert isinstance(doc["created_at"], datetime)
    failed = await db.tasks.find_one({"_id": f"task_{unique}_2"})
    assert failed is not None
    assert (failed["state"], failed["error"], failed["results"]) == ("FAILURE", "no", None)
    group = await db.group_metas.find_one({"_id": f"group_{unique}_2"})
    assert group is not None
    assert group["task_uuids"] == [f"task_{unique}_c{i}" for i in range(10)]
    assert bool(group["chord_triggered"]) is True  # nx-27017 answers 1 for true
    assert bool(group["lock"]) is False


async def test_documents_go_writes_are_read(backend: MongoBackend, db: DB, unique: str) -> None:
    """As Go's backend writes them: ``$set`` upserts, results as ``[{type, value}]`` with
    int64 values, a JSON-object string result stored as type ``json``, no ``delete_at``
    before the final state; GroupMeta by InsertOne."""
    done, failed, jsonish = (f"task_{unique}_{n}" for n in (1, 2, 3))
    created = datetime(2025, 1, 15, 10, 29, 58, 501000, tzinfo=UTC)
    for uuid in (done, failed, jsonish):
        await db.tasks.update_one(
            {"_id": uuid},
            {"$set": {"state": "PENDING", "task_name": "add", "created_at": created}},
            upsert=True,
        )
    await db.tasks.update_one({"_id": done}, {"$set": {"state": "RECEIVED"}}, upsert=True)
    assert (await backend.get_state(done)).state is State.RECEIVED  # type: ignore[union-attr]
    delete_at = datetime.now(UTC) + timedelta(hours=1)
    results = [{"type": "int64", "value": Int64(2)}, {"type": "string", "value": "two"}]
    await db.tasks.update_one(
        {"_id": done}, {"$set": {"state": "SUCCESS", "results": results, "delete_at": delete_at}}, upsert=True
    )
    await db.tasks.update_one(
        {"_id": failed}, {"$set": {"state": "FAILURE", "error": "boom", "delete_at": delete_at}}, upsert=True
    )
    json_results = [{"type": "json", "value": {"a": 1, "b": [1, 2]}}]
    await db.tasks.update_one({"_id": jsonish}, {"$set": {"state": "SUCCESS", "results": json_results}})
    group = f"group_{unique}_1"
    await db.group_metas.insert_one(
        {
            "_id": group,
            "task_uuids": [done, failed],
            "chord_triggered": False,
            "lock": False,
            "created_at": created,
        }
    )
    ok, bad, js = await backend.get_states([done, failed, jsonish])
    assert ok is not None
    assert bad is not None
    assert js is not None
    assert (ok.state, ok.value, ok.task_name, ok.created_at) == (State.SUCCESS, (2, "two"), "add", created)
    assert (bad.state, bad.error) == (State.FAILURE, "boom")
    assert js.results == [TaskResult(type="string", value='{"a":1,"b":[1,2]}')]
    assert await backend.group_completed(group, 2)
    assert [s.task_uuid for s in await backend.group_task_states(group, 2)] == [done, failed]
    winners = await asyncio.gather(*(backend.trigger_chord(group) for _ in range(20)))
    assert winners.count(True) == 1


async def test_python_states_keep_the_pending_name_and_time_and_use_int64(
    backend: MongoBackend, db: DB, unique: str
) -> None:
    sig = Signature(uuid=f"task_{unique}_1", name="add")
    await backend.set_state(TaskState.new(sig, State.PENDING))
    pending = await db.tasks.find_one({"_id": sig.uuid})
    assert pending is not None
    await backend.set_states(
        [TaskState(task_uuid=sig.uuid, state=s) for s in (State.RECEIVED, State.STARTED)]
    )
    await backend.set_state(
        TaskState(task_uuid=sig.uuid, state=State.SUCCESS, results=[TaskResult(type="int64", value=5)])
    )
    doc = await db.tasks.find_one({"_id": sig.uuid})
    assert doc is not None
    assert (doc["task_name"], doc["created_at"]) == ("add", pending["created_at"])
    raw = await db.tasks.find_one({"_id": sig.uuid}, projection={"results": 1})
    assert raw is not None
    assert raw["results"] == [{"type": "int64", "value": 5}]
    # sent as BSON int64, as Go's driver writes an int64 (nx-27017 answers a plain int)
    update = task_update(TaskState(task_uuid=sig.uuid, results=[TaskResult(type="int64", value=5)]), NOW)
    assert isinstance(update["results"][0]["value"], Int64)
    assert not isinstance(
        task_update(TaskState(results=[TaskResult(type="int", value=5)]), NOW)["results"][0]["value"], Int64
    )


# -- the database and the URL ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "configured", "expected"),
    [
        ("mongodb://127.0.0.1:27017", "", "machinery"),
        ("mongodb://127.0.0.1:27017/", "", "machinery"),
        ("mongodb://127.0.0.1:27017/results?w=majority", "", "results"),
        ("mongodb://127.0.0.1:27017/results", "go_db", "go_db"),
        ("mongodb+srv://user:s3cret@cluster0.example.invalid/app", "", "app"),
    ],
)
def test_the_database_is_the_configured_one_then_the_urls_then_machinery(
    url: str, configured: str, expected: str
) -> None:
    backend = MongoBackend(Config(result_backend=url, mongodb=MongoDBConfig(database=configured)))
    assert backend.database == expected
    assert "s3cret" not in backend.describe()


async def test_documents_land_in_gos_default_database_when_the_url_names_none(unique: str, db: DB) -> None:
    backend = MongoBackend(Config(result_backend="mongodb://127.0.0.1:27017"))
    try:
        sig = Signature(uuid=f"task_{unique}_1", name="add")
        await backend.set_state(TaskState.new(sig, State.PENDING))
        assert await backend.client["machinery"].tasks.find_one({"_id": sig.uuid}) is not None
    finally:
        await backend.close()
        await delete_documents(URL, unique, database="machinery")


def test_url_options_reach_pymongo_and_win_over_the_defaults() -> None:
    url = "mongodb+srv://user:s3cret@cluster0.example.invalid/app?serverSelectionTimeoutMS=250&tlsAllowInvalidHostnames=true"
    client = MongoBackend(Config(result_backend=url)).client
    assert client.options.server_selection_timeout == 0.25
    assert client.options.pool_options.tls_allow_invalid_hostnames is True
    plain = MongoBackend(Config(result_backend=URL)).client
    assert plain.options.server_selection_timeout == 5.0


# -- expiry ---------------------------------------------------------------------------------


async def test_ttl_indexes_on_delete_at_in_both_collections(backend: MongoBackend, db: DB) -> None:
    for collection in (db.tasks, db.group_metas):
        indexes = (await collection.index_information()).values()
        ttl = [i for i in indexes if i["key"] == [("delete_at", 1)]]
        assert ttl, indexes
        assert ttl[0]["expireAfterSeconds"] == 0


@pytest.mark.parametrize(("expire_in", "seconds"), [(0, 3600), (600, 600)], ids=["default-3600", "600s"])
async def test_every_write_sets_delete_at_from_results_expire_in(
    db: DB, unique: str, expire_in: int, seconds: int
) -> None:
    """Go sets ``delete_at`` only on SUCCESS and FAILURE, to now + 0 s when the setting is 0."""
    backend = MongoBackend(Config(result_backend=URL, results_expire_in=expire_in))
    try:
        sig = Signature(uuid=f"task_{unique}_1", name="add")
        group = f"group_{unique}_1"
        await backend.set_state(TaskState.new(sig, State.PENDING))
        await backend.init_group(group, [sig.uuid])
        expected = datetime.now(UTC) + timedelta(seconds=seconds)
        task_doc = await db.tasks.find_one({"_id": sig.uuid})
        group_doc = await db.group_metas.find_one({"_id": group})
        assert task_doc is not None
        assert group_doc is not None
        assert near(task_doc["delete_at"], expected)
        assert near(group_doc["delete_at"], expected)
    finally:
        await backend.close()


async def test_a_document_past_delete_at_reads_as_gone(backend: MongoBackend, db: DB, unique: str) -> None:
    """MongoDB's TTL monitor deletes once a minute; until then the document is still there."""
    uuid, group = f"task_{unique}_1", f"group_{unique}_1"
    past = datetime.now(UTC) - timedelta(seconds=1)
    await db.tasks.insert_one({"_id": uuid, "state": "SUCCESS", "results": [], "delete_at": past})
    await db.group_metas.insert_one(
        {"_id": group, "task_uuids": [uuid], "chord_triggered": False, "delete_at": past}
    )
    assert await backend.get_state(uuid) is None
    assert await backend.get_states([uuid]) == [None]
    assert await backend.get_group_meta(group) is None


# -- waiting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("streams", [True, False], ids=["change-stream", "polling"])
async def test_a_waiter_is_woken_with_or_without_change_streams(
    backend: MongoBackend, unique: str, streams: bool
) -> None:
    writer = MongoBackend(Config(result_backend=URL))
    try:
        if not streams:
            backend.notifier.unsupported = True  # what a standalone server answers
        sig = Signature(uuid=f"task_{unique}_1", name="add")
        await writer.set_state(TaskState.new(sig, State.STARTED))
        waiting = asyncio.create_task(backend.wait_for_state(sig.uuid, 60))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert backend.notifier.live is streams
        await writer.set_state(TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="int64", value=1)]))
        async with asyncio.timeout(60):  # a hang guard
            state = await waiting
        assert state.value == 1
    finally:
        await writer.close()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://user:s3cret@127.0.0.1:notaport/db", "bad MongoDB URL"),
        ("mongodb://user:s3cret@127.0.0.1:27017/bad.name", "not a MongoDB database name"),
    ],
)
def test_a_bad_url_is_a_config_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        _ = MongoBackend(Config(result_backend=url)).client
    assert "s3cret" not in str(caught.value)


async def test_a_document_that_is_not_a_state_is_reported_by_id(
    backend: MongoBackend, db: DB, unique: str
) -> None:
    uuid = f"task_{unique}_1"
    await db.tasks.insert_one({"_id": uuid, "state": "DANCING"})
    with pytest.raises(ValueError, match=f"{uuid}.*not a task state"):
        await backend.get_state(uuid)


async def test_a_chord_of_an_unknown_group_does_not_fire(backend: MongoBackend, unique: str) -> None:
    assert await backend.trigger_chord(f"group_{unique}_unknown") is False


# -- a restarted server ----------------------------------------------------------------------------


async def test_a_restarted_server_loses_no_state_a_waiter_waits_for(tmp_path: Path, unique: str) -> None:
    server = PrivateMongo(tmp_path)
    server.start()
    writer = MongoBackend(Config(result_backend=server.url))
    waiter = MongoBackend(Config(result_backend=server.url))
    try:
        sigs = [Signature(uuid=f"task_{unique}_{i}", name="add") for i in range(2)]
        group = f"group_{unique}_1"
        await writer.init_group(group, [s.uuid for s in sigs])
        await writer.set_states([TaskState.new(s, State.PENDING) for s in sigs])
        await writer.set_state(
            TaskState.new(sigs[0], State.SUCCESS, results=[TaskResult(type="int64", value=1)])
        )
        waiting = asyncio.create_task(waiter.wait_for_state(sigs[1].uuid, 90))
        await asyncio.sleep(0.3)
        server.stop()
        final = TaskState.new(sigs[1], State.SUCCESS, results=[TaskResult(type="int64", value=2)])
        writing = asyncio.create_task(writer.set_state(final))  # retries while it is down
        await asyncio.sleep(0.5)
        assert not writing.done()
        assert not waiting.done()
        server.start()
        async with asyncio.timeout(90):  # a hang guard
            await writing
            state = await waiting
        assert state.value == 2
        assert await writer.group_completed(group, 2)
        assert await writer.trigger_chord(group)
        assert [s.value for s in await waiter.group_task_states(group, 2)] == [1, 2]
    finally:
        await writer.close()
        await waiter.close()
        server.stop()


async def test_an_unreachable_server_is_retried_then_raised_without_the_password_in_logs(
    unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pymongo.errors import ConnectionFailure

    from machinery_aio.drivers import retrying
    from tests.support.memcache import free_port

    monkeypatch.setattr(retrying, "OUTAGE_BUDGET", 2.0)  # one try takes about 0.5 s here
    url = f"mongodb://user:s3cret@127.0.0.1:{free_port()}/db?serverSelectionTimeoutMS=100"
    backend = MongoBackend(Config(result_backend=url))
    try:
        with caplog.at_level("WARNING", "machinery_aio"), pytest.raises(ConnectionFailure):
            await backend.get_state(f"task_{unique}_1")
    finally:
        await backend.close()
    assert "retrying until the server is back" in caplog.text
    assert "s3cret" not in caplog.text
