"""What is particular to DynamoDB: Go's tables and attribute names, typed results (and Go's
stringified ones read back typed), TTL, tables used as they are or created, Go's group meta."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from machinery_aio import Config, ConfigError, Signature, State, TaskResult, TaskState
from machinery_aio.drivers import create_backend
from machinery_aio.drivers.aws.backend import DynamoDBBackend


@pytest.fixture
async def backend(aws_config: Config) -> AsyncIterator[DynamoDBBackend]:
    made = create_backend(aws_config)
    assert isinstance(made, DynamoDBBackend)
    await made.connect()
    yield made
    await made.close()


async def item(dynamodb: Any, table: str, key: str, value: str) -> dict[str, Any]:
    response = await dynamodb.get_item(TableName=table, Key={key: {"S": value}}, ConsistentRead=True)
    found: dict[str, Any] = response["Item"]
    return found


async def test_a_go_reader_finds_the_state_under_gos_table_and_attribute_names(
    backend: DynamoDBBackend, dynamodb: Any, aws_config: Config, unique: str
) -> None:
    sig = Signature(uuid=f"task_{unique}", name="add")
    await backend.set_state(TaskState.new(sig, State.PENDING))
    pending = await item(dynamodb, aws_config.dynamodb.task_states_table, "TaskUUID", sig.uuid)
    assert set(pending) == {"TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt", "TTL"}
    assert (pending["TaskName"], pending["State"], pending["Results"]) == (
        {"S": "add"},
        {"S": "PENDING"},
        {"NULL": True},
    )
    results = [TaskResult(type="int64", value=3), TaskResult(type="[]string", value=["a", "b"])]
    await backend.set_state(TaskState(task_uuid=sig.uuid, state=State.SUCCESS, results=results))
    done = await item(dynamodb, aws_config.dynamodb.task_states_table, "TaskUUID", sig.uuid)
    assert done["State"] == {"S": "SUCCESS"}
    assert done["TaskName"] == {"S": "add"}  # kept from PENDING
    assert done["CreatedAt"] == pending["CreatedAt"]
    assert done["Results"] == {
        "L": [
            {"M": {"Type": {"S": "int64"}, "Value": {"N": "3"}}},
            {"M": {"Type": {"S": "[]string"}, "Value": {"L": [{"S": "a"}, {"S": "b"}]}}},
        ]
    }
    assert int(done["TTL"]["N"]) > time.time() + 500  # results_expire_in 600


async def test_gos_stringified_results_are_read_back_typed(
    backend: DynamoDBBackend, dynamodb: Any, aws_config: Config, unique: str
) -> None:
    """Go writes every result value as a string (``fmt.Sprintf("%v")``)."""
    go_results = [
        ("int64", "2"),
        ("[]int64", "[1 2 3]"),
        ("bool", "true"),
        ("float64", "1.5"),
        ("string", "7"),
    ]
    await dynamodb.put_item(
        TableName=aws_config.dynamodb.task_states_table,
        Item={
            "TaskUUID": {"S": f"task_{unique}"},
            "TaskName": {"S": "go_task"},
            "State": {"S": "SUCCESS"},
            "Results": {"L": [{"M": {"Type": {"S": t}, "Value": {"S": v}}} for t, v in go_results]},
            "Error": {"S": ""},
            "CreatedAt": {"S": "2025-01-15T10:30:00.123456789Z"},
            "TTL": {"N": str(int(time.time()) + 600)},
        },
    )
    state = await backend.get_state(f"task_{unique}")
    assert state is not None
    assert state.value == (2, [1, 2, 3], True, 1.5, "7")
    assert (state.task_name, state.created_at.year) == ("go_task", 2025)


async def test_go_group_meta_layout_and_a_go_made_group_triggers_once(
    backend: DynamoDBBackend, dynamodb: Any, aws_config: Config, unique: str
) -> None:
    group = f"group_{unique}"
    await backend.init_group(group, [f"task_{unique}_1", f"task_{unique}_2"])
    meta = await item(dynamodb, aws_config.dynamodb.group_metas_table, "GroupUUID", group)
    assert set(meta) == {"GroupUUID", "TaskUUIDs", "ChordTriggered", "Lock", "CreatedAt", "TTL"}
    assert meta["TaskUUIDs"] == {"L": [{"S": f"task_{unique}_1"}, {"S": f"task_{unique}_2"}]}
    assert (meta["ChordTriggered"], meta["Lock"]) == ({"BOOL": False}, {"BOOL": False})
    go_group = f"group_{unique}_go"
    await dynamodb.put_item(  # as Go's sender writes it
        TableName=aws_config.dynamodb.group_metas_table,
        Item={
            "GroupUUID": {"S": go_group},
            "TaskUUIDs": {"L": [{"S": "task_a"}]},
            "ChordTriggered": {"BOOL": False},
            "Lock": {"BOOL": False},
            "CreatedAt": {"S": "2025-01-15T10:30:00Z"},
            "TTL": {"N": str(int(time.time()) + 600)},
        },
    )
    assert [await backend.trigger_chord(go_group) for _ in range(3)] == [True, False, False]
    assert await backend.trigger_chord(f"group_{unique}_unknown") is False


async def test_tables_are_created_with_gos_keys_and_a_ttl(
    backend: DynamoDBBackend, dynamodb: Any, aws_config: Config
) -> None:
    for table, key in (
        (aws_config.dynamodb.task_states_table, "TaskUUID"),
        (aws_config.dynamodb.group_metas_table, "GroupUUID"),
    ):
        described = (await dynamodb.describe_table(TableName=table))["Table"]
        assert described["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
        ttl = (await dynamodb.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "TTL")


async def test_existing_tables_are_used_as_they_are_and_missing_ones_are_a_clear_error_when_creation_is_off(
    aws_config: Config, dynamodb: Any
) -> None:
    aws_config.dynamodb.create_tables = False
    missing = create_backend(aws_config)
    with pytest.raises(ConfigError, match=rf"DynamoDB table '{aws_config.dynamodb.task_states_table}' does"):
        await missing.connect()
    await missing.close()
    for table, key in (
        (aws_config.dynamodb.task_states_table, "TaskUUID"),
        (aws_config.dynamodb.group_metas_table, "GroupUUID"),
    ):
        await dynamodb.create_table(  # as a Go user makes them: provisioned, no TTL
            TableName=table,
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
        )
    existing = create_backend(aws_config)
    try:
        await existing.connect()
        await existing.set_state(TaskState(task_uuid="task_x", state=State.STARTED))
        assert (await existing.get_state("task_x")) is not None
        described = (await dynamodb.describe_table(TableName=aws_config.dynamodb.task_states_table))["Table"]
        assert described["ProvisionedThroughput"]["ReadCapacityUnits"] == 5
    finally:
        await existing.close()
