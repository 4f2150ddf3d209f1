"""TaskState and GroupMeta as the BSON documents Go Machinery's MongoDB backend stores.

``tasks``: ``{_id: <task uuid>, state, task_name, created_at, results: [{type, value}],
error, delete_at}``; ``group_metas``: ``{_id: <group uuid>, task_uuids, chord_triggered,
lock, created_at, delete_at}``. ``delete_at`` (a date) is what the TTL index expires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bson import Decimal128, Int64

from ...gotime import ZERO_TIME
from ...state import GroupMeta, State, TaskResult, TaskState

__all__ = ["from_bson", "group_document", "parse_group", "parse_task", "task_update", "to_bson"]

_INT64_LOW, _INT64_HIGH = -(2**63), 2**63 - 1
_INT64_TYPES = frozenset({"int64", "uint64", "uint32", "uint", "[]int64", "[]uint64", "[]uint32", "[]uint"})
"""Go types whose values Go's BSON encoder writes as 64-bit integers (not ``int``, which it
writes as int32 when it fits; pymongo does the same for a plain Python int)."""


def to_bson(go_type: str, value: Any) -> Any:
    """A result value for BSON: int64 as Int64, an integer BSON cannot hold as Decimal128."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _INT64_LOW <= value <= _INT64_HIGH:
            return Decimal128(str(value))
        return Int64(value) if go_type in _INT64_TYPES else value
    if isinstance(value, list):
        return [to_bson(go_type, v) for v in value]
    if isinstance(value, dict):
        return {k: to_bson("", v) for k, v in value.items()}
    return value


def from_bson(value: Any) -> Any:
    """The inverse of :func:`to_bson`, and JSON-able values for what BSON adds."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return int(number) if number == number.to_integral_value() else float(number)
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    if isinstance(value, dict):
        return {str(k): from_bson(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return _aware(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    if isinstance(value, str | float):
        return value
    return str(value)


def task_update(state: TaskState, delete_at: datetime) -> dict[str, Any]:
    """The ``$set`` that stores ``state``: fields it has no value for (the task name and
    creation time after PENDING) are left as stored, which is how they are kept."""
    fields: dict[str, Any] = {
        "state": state.state.value,
        "results": None
        if state.results is None
        else [{"type": r.type, "value": to_bson(r.type, r.value)} for r in state.results],
        "error": state.error,
        "delete_at": delete_at,
    }
    if state.task_name:
        fields["task_name"] = state.task_name
    if state.created_at != ZERO_TIME:
        fields["created_at"] = state.created_at
    if state.ttl:
        fields["ttl"] = state.ttl
    return fields


def parse_task(doc: dict[str, Any]) -> TaskState:
    """A ``tasks`` document as a TaskState; raises ValueError for one that is not."""
    uuid = doc.get("_id")
    try:
        results = doc.get("results")
        return TaskState(
            task_uuid=str(uuid),
            task_name=doc.get("task_name") or "",
            state=State(str(doc.get("state"))),
            results=None if results is None else [_result(r) for r in results],
            error=doc.get("error") or "",
            created_at=_aware(doc.get("created_at")),
            ttl=_int(doc.get("ttl")),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"the document {uuid!r} in tasks is not a task state: {exc}") from None


def _result(item: dict[str, Any]) -> TaskResult:
    go_type, value = str(item["type"]), item.get("value")
    if go_type == "json":
        # Go stores a string result that parses as a JSON object as the object itself.
        return TaskResult(type="string", value=json.dumps(from_bson(value), separators=(",", ":")))
    return TaskResult(type=go_type, value=from_bson(value))


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        return ZERO_TIME
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def group_document(meta: GroupMeta, delete_at: datetime) -> dict[str, Any]:
    return {
        "_id": meta.group_uuid,
        "task_uuids": list(meta.task_uuids),
        "chord_triggered": meta.chord_triggered,
        "lock": meta.lock,
        "created_at": meta.created_at,
        "delete_at": delete_at,
    }


def parse_group(doc: dict[str, Any]) -> GroupMeta:
    """A ``group_metas`` document as a GroupMeta; raises ValueError for one that is not."""
    uuid = doc.get("_id")
    try:
        return GroupMeta(
            group_uuid=str(uuid),
            task_uuids=[str(u) for u in doc.get("task_uuids") or ()],
            chord_triggered=bool(doc.get("chord_triggered")),
            lock=bool(doc.get("lock")),
            created_at=_aware(doc.get("created_at")),
            ttl=_int(doc.get("ttl")),
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the document {uuid!r} in group_metas is not a group: {exc}") from None


def _int(value: Any) -> int:
    """Go's ``ttl`` (an int; older Go versions wrote a date there, read as 0)."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
