"""Signature, Arg, TaskState, GroupMeta: Go Machinery's JSON byte for byte, and clear errors."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from machinery_aio import (
    Arg,
    GroupMeta,
    InvalidMessageError,
    Signature,
    State,
    TaskResult,
    TaskState,
)
from machinery_aio.gotime import NanoTime, format_time
from machinery_aio.gotypes import ArgTypeError
from machinery_aio.signature import new_chord_uuid, new_group_uuid, new_task_uuid
from machinery_aio.state import parse_state, results_to_value, value_to_results
from tests.conftest import GOLDEN, golden

GO_SIGNATURE_KEYS = [
    "UUID",
    "Name",
    "RoutingKey",
    "ETA",
    "GroupUUID",
    "GroupTaskCount",
    "Args",
    "Headers",
    "Priority",
    "Immutable",
    "RetryCount",
    "RetryTimeout",
    "OnSuccess",
    "OnError",
    "ChordCallback",
    "BrokerMessageGroupId",
    "SQSReceiptHandle",
    "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
]
SIGNATURES = ["01_plain_task_int64_eta", "02_chain_onsuccess_nesting", "03_chord_member"]
STATES = ["10_task_state_pending", "11_task_state_success", "12_task_state_failure"]


# -- golden vectors ----------------------------------------------------------------------


def test_golden_files_are_the_shared_reference() -> None:
    names = sorted(p.name for p in GOLDEN.glob("*.json"))
    assert len(names) == 14  # 7 vectors, pretty and compact
    for name in SIGNATURES + STATES + ["13_group_meta"]:
        assert not golden(name).endswith(b"\n")


@pytest.mark.parametrize("name", SIGNATURES)
def test_signature_vectors_round_trip_byte_for_byte(name: str) -> None:
    data = golden(name)
    assert Signature.from_json(data).to_json() == data
    assert Signature.from_json(data.decode()).to_json() == data


@pytest.mark.parametrize("name", STATES)
def test_task_state_vectors_round_trip_byte_for_byte(name: str) -> None:
    data = golden(name)
    assert TaskState.from_json(data).to_json() == data


def test_group_meta_vector_round_trips_byte_for_byte() -> None:
    data = golden("13_group_meta")
    meta = GroupMeta.from_json(data)
    assert meta.to_json() == data
    assert meta.group_uuid == "group_ae13d723-0c02-4101-8392-2d5aff8c4ce4"
    assert meta.task_uuids == [
        "task_b6e536c9-a877-493d-8201-6ed9ed1aefd0",
        "task_c51a4378-15a2-4199-8981-92464cdfed0c",
    ]
    assert meta.chord_triggered is False


@pytest.mark.parametrize("name", SIGNATURES + STATES + ["13_group_meta"])
def test_pretty_and_compact_vectors_hold_the_same_document(name: str) -> None:
    pretty = (GOLDEN / f"{name}.json").read_bytes()
    model: type[Signature] | type[TaskState] | type[GroupMeta]
    model = Signature if name[0] == "0" else GroupMeta if "group" in name else TaskState
    assert model.model_validate_json(pretty).to_json() == golden(name)


def test_plain_task_vector_reads_as_python() -> None:
    sig = Signature.from_json(golden("01_plain_task_int64_eta"))
    assert sig.uuid == "task_baec41c6-2eb7-429f-b1a2-1a9e5d5919ca"
    assert sig.name == "add"
    assert sig.routing_key == "machinery_tasks"
    assert isinstance(sig.eta, NanoTime)
    assert format_time(sig.eta) == "2025-01-15T10:30:00.123456789Z"
    assert sig.retry_count == 3
    assert sig.headers == {}
    assert sig.python_args() == [1, 2]
    assert sig.on_success is None
    assert sig.chord_callback is None


def test_chain_vector_nests_on_success() -> None:
    sig = Signature.from_json(golden("02_chain_onsuccess_nesting"))
    assert sig.on_success is not None
    second = sig.on_success[0]
    assert (second.name, second.routing_key, second.headers) == ("add", "", None)
    assert second.on_success is not None
    third = second.on_success[0]
    assert (third.name, third.python_args(), third.on_success) == ("multiply", [4], None)


def test_chord_member_vector_carries_the_callback() -> None:
    sig = Signature.from_json(golden("03_chord_member"))
    assert sig.group_uuid.startswith("group_")
    assert sig.group_task_count == 2
    assert sig.chord_callback is not None
    assert sig.chord_callback.uuid.startswith("chord_")
    assert sig.chord_callback.args is None


def test_task_state_vectors_read_as_python() -> None:
    pending = TaskState.from_json(golden("10_task_state_pending"))
    success = TaskState.from_json(golden("11_task_state_success"))
    failure = TaskState.from_json(golden("12_task_state_failure"))
    assert pending.state is State.PENDING
    assert not pending.is_completed()
    assert success.is_success()
    assert success.is_completed()
    assert success.value == 2
    assert failure.is_failure()
    assert failure.error == "something went wrong"
    assert failure.results is None
    assert failure.value is None
    assert format_time(success.created_at) == "2025-01-15T10:29:58.501234567Z"


# -- what Python writes ----------------------------------------------------------------


def test_new_signature_has_all_19_keys_in_gos_order_and_shapes() -> None:
    sig = Signature(name="add", args=[Arg(type="int64", value=1)])
    doc = json.loads(sig.to_json())
    assert list(doc) == GO_SIGNATURE_KEYS
    assert doc["ETA"] is None
    assert doc["Args"] == [{"Name": "", "Type": "int64", "Value": 1}]
    assert doc["OnSuccess"] is None
    assert doc["ChordCallback"] is None
    assert doc["GroupTaskCount"] == 0
    assert doc["Immutable"] is False
    assert b" " not in sig.to_json()  # compact, as Go's json.Marshal


def test_task_state_and_group_meta_keys() -> None:
    state = TaskState(task_uuid="task_x", task_name="add")
    assert list(json.loads(state.to_json())) == [
        "TaskUUID",
        "TaskName",
        "State",
        "Results",
        "Error",
        "CreatedAt",
        "TTL",
    ]
    assert json.loads(state.to_json())["CreatedAt"] == "0001-01-01T00:00:00Z"
    meta = GroupMeta(group_uuid="group_x", task_uuids=["a"])
    assert list(json.loads(meta.to_json())) == [
        "GroupUUID",
        "TaskUUIDs",
        "ChordTriggered",
        "Lock",
        "CreatedAt",
        "TTL",
    ]


def test_eta_is_written_rfc3339_with_z() -> None:
    sig = Signature(name="a", eta=datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=UTC))
    assert json.loads(sig.to_json())["ETA"] == "2025-01-15T10:30:00.123456Z"
    assert Signature(name="a", eta="2025-01-15T12:30:00+02:00").eta == datetime(
        2025, 1, 15, 10, 30, tzinfo=UTC
    )


def test_naive_eta_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Signature(name="a", eta=datetime(2025, 1, 15))


@pytest.mark.parametrize(
    ("make", "prefix"),
    [(new_task_uuid, "task_"), (new_group_uuid, "group_"), (new_chord_uuid, "chord_")],
)
def test_uuid_prefixes(make: Any, prefix: str) -> None:
    value = make()
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(prefix + uuid4, value)
    assert make() != value


def test_arg_of_types_values() -> None:
    assert Arg.of(5).model_dump() == {"Name": "", "Type": "int64", "Value": 5}
    arg = Arg.of(5, float, name="x")
    assert (arg.name, arg.type, arg.value) == ("x", "float64", 5.0)
    assert Arg.of({"k": [1]}).type == "json"
    assert Arg(type="[]byte", value="aGk=").python_value() == b"hi"


def test_python_args_are_checked_strictly() -> None:
    sig = Signature(name="a", args=[Arg(type="int64", value=1.5)])
    with pytest.raises(ArgTypeError, match="not an integer literal"):
        sig.python_args()
    assert Signature(name="a").python_args() == []


def test_copy_fresh_is_a_deep_copy_with_the_same_bytes() -> None:
    sig = Signature.from_json(golden("02_chain_onsuccess_nesting"))
    copied = sig.copy_fresh()
    assert copied.to_json() == sig.to_json()
    assert copied.on_success is not None
    assert sig.on_success is not None
    copied.on_success[0].args = []
    assert sig.on_success[0].args


def test_model_copy_keeps_eta_nanoseconds() -> None:
    sig = Signature.from_json(golden("01_plain_task_int64_eta"))
    assert sig.model_copy(deep=True).to_json() == golden("01_plain_task_int64_eta")


# -- Go's decoder: case-insensitive keys, unknown keys ignored ---------------------------


def test_keys_match_case_insensitively() -> None:
    body = (
        b'{"uuid":"task_1","NAME":"add","routingKey":"q","eta":"2025-01-15T10:30:00Z",'
        b'"args":[{"name":"a","TYPE":"int64","vAlUe":7}],"headers":{"k":"v"},"retrycount":2,'
        b'"onsuccess":[{"uuid":"task_2","name":"next"}],"IMMUTABLE":true}'
    )
    sig = Signature.from_json(body)
    assert (sig.uuid, sig.name, sig.routing_key) == ("task_1", "add", "q")
    assert sig.eta == datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
    assert sig.python_args() == [7]
    assert sig.args is not None
    assert sig.args[0].name == "a"
    assert sig.headers == {"k": "v"}
    assert sig.retry_count == 2
    assert sig.immutable is True
    assert sig.on_success is not None
    assert sig.on_success[0].name == "next"
    # written back with Go's own spelling
    assert list(json.loads(sig.to_json())) == GO_SIGNATURE_KEYS


def test_unknown_keys_are_ignored_and_dropped() -> None:
    doc = json.loads(golden("01_plain_task_int64_eta"))
    doc["Extra"] = {"nested": True}
    doc["Args"][0]["Comment"] = "x"
    sig = Signature.from_json(json.dumps(doc, separators=(",", ":")))
    assert sig.to_json() == golden("01_plain_task_int64_eta")


def test_state_keys_match_case_insensitively() -> None:
    state = TaskState.from_json(
        b'{"taskuuid":"task_1","state":"SUCCESS","results":[{"type":"string","value":"x"}],"Other":1}'
    )
    assert (state.task_uuid, state.state, state.value) == ("task_1", State.SUCCESS, "x")


def test_args_null_and_empty_mean_no_args() -> None:
    for args in (b"null", b"[]"):
        sig = Signature.from_json(b'{"UUID":"task_1","Name":"a","Args":' + args + b"}")
        assert sig.python_args() == []


# -- bad bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason", "uuid", "name"),
    [
        (b"", "not valid JSON", "", ""),
        (b"not json", "not valid JSON", "", ""),
        (b'{"UUID":"task_1","Name":"add"', "not valid JSON", "", ""),
        (b"\xff\xfe\x00", "not valid JSON", "", ""),
        (b"[" * 5000, "not valid JSON", "", ""),
        (b"null", "not a JSON object, so not a Signature", "", ""),
        (b"[1, 2]", "not a JSON object, so not a Signature", "", ""),
        (b'"add"', "not a JSON object, so not a Signature", "", ""),
        (b"42", "not a JSON object, so not a Signature", "", ""),
        (b"{}", "message has no task Name", "", ""),
        (b'{"UUID":"task_1"}', "message has no task Name", "task_1", ""),
        (b'{"Name":"add"}', "message has no task UUID", "", "add"),
        (b'{"UUID":"task_1","Name":"add","Args":5}', "Args: Input should be a valid array", "task_1", "add"),
        (b'{"UUID":"task_1","Name":"add","Args":[1]}', "Args.0", "task_1", "add"),
        (
            b'{"UUID":"task_1","Name":"add","Args":[{"Value":1}]}',
            "Args.0.Type: Field required",
            "task_1",
            "add",
        ),
        (
            b'{"UUID":"task_1","Name":"add","ETA":"2025-01-15T10:30:00"}',
            "ETA: Value error, not an RFC 3339 time with a zone",
            "task_1",
            "add",
        ),
        (b'{"UUID":"task_1","Name":"add","ETA":12}', "ETA", "task_1", "add"),
        (b'{"UUID":"task_1","Name":"add","Priority":300}', "Priority", "task_1", "add"),
        (b'{"UUID":"task_1","Name":"add","Headers":[]}', "Headers", "task_1", "add"),
        (b'{"UUID":"task_1","Name":"add","OnSuccess":[{"Name":5}]}', "OnSuccess.0.Name", "task_1", "add"),
        (b'{"UUID":"task_1","Name":"add","ChordCallback":"x"}', "ChordCallback", "task_1", "add"),
        (b'{"UUID":5,"Name":"add"}', "UUID: Input should be a valid string", "", "add"),
        (b'{"UUID":"task_1","Name":"add","Args":[1],"Priority":"x"}', "(and 1 more errors)", "task_1", "add"),
    ],
)
def test_bad_bodies_raise_invalid_message_error(body: bytes, reason: str, uuid: str, name: str) -> None:
    with pytest.raises(InvalidMessageError) as info:
        Signature.from_json(body)
    error = info.value
    assert reason in error.reason
    assert str(error) == error.reason
    assert (error.task_uuid, error.task_name) == (uuid, name)
    assert isinstance(error, ValueError)


# -- results -------------------------------------------------------------------------------


def test_value_to_results_and_back() -> None:
    assert value_to_results(None) == []
    assert results_to_value([]) is None
    assert results_to_value(None) is None
    one = value_to_results(3)
    assert [(r.type, r.value) for r in one] == [("int64", 3)]
    assert results_to_value(one) == 3
    several = value_to_results((1, "a", [True]))
    assert [r.type for r in several] == ["int64", "string", "[]bool"]
    assert results_to_value(several) == (1, "a", [True])
    hinted = value_to_results((1, 2), tuple[float, int])
    assert [(r.type, r.value) for r in hinted] == [("float64", 1.0), ("int64", 2)]


def test_task_state_new_stamps_created_at_only_when_pending() -> None:
    sig = Signature(uuid="task_1", name="add")
    pending = TaskState.new(sig, State.PENDING)
    assert pending.created_at.year == datetime.now(UTC).year
    started = TaskState.new(sig, State.STARTED)
    assert format_time(started.created_at) == "0001-01-01T00:00:00Z"
    done = TaskState.new(sig, State.SUCCESS, results=[TaskResult(type="int64", value=1)])
    assert json.loads(done.to_json())["Results"] == [{"Type": "int64", "Value": 1}]
    assert TaskState.new(sig, State.SUCCESS, results=[]).to_json().count(b'"Results":[]') == 1


def test_parse_state_tolerates_missing_and_garbage() -> None:
    assert parse_state(None) is None
    assert parse_state(b"garbage") is None
    assert parse_state(b'{"State":"NOPE"}') is None
    state = parse_state(golden("11_task_state_success"))
    assert state is not None
    assert state.value == 2


def test_a_misspelt_field_in_code_is_refused() -> None:
    """Messages are read as Go reads them (unknown keys ignored); models built in code are not:
    a misspelt option would otherwise vanish."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="retry_cuont"):
        Signature(name="add", retry_cuont=3)  # type: ignore[call-arg]
    assert Signature.from_json(b'{"UUID":"task_1","Name":"add","RetryCuont":3}').retry_count == 0
