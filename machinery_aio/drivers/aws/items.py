"""TaskState and GroupMeta as DynamoDB items, with Go Machinery's attribute names.

Go writes ``Results`` as a list of ``{Type: S, Value: S}``, every value stringified with
``%v``; here values keep their type (``N`` for numbers, ``BOOL``, ``L``, ``M``), and both
forms are read back as the typed value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ... import gotypes
from ...gotime import ZERO_TIME, format_time, parse_time
from ...state import GroupMeta, State, TaskResult, TaskState

__all__ = ["from_attribute", "group_item", "group_meta", "task_state", "to_attribute"]

_MAX_DIGITS = 38
"""DynamoDB numbers hold 38 significant digits; longer integers are stored as strings."""
_GO_BOOL = {"true": True, "false": False}


def to_attribute(value: Any) -> dict[str, Any]:
    """A JSON value as a DynamoDB attribute value, keeping its type."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        text = str(value)
        return {"N": text} if len(text.lstrip("-")) <= _MAX_DIGITS else {"S": text}
    if isinstance(value, float):
        return {"N": repr(value)} if math.isfinite(value) else {"S": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, list | tuple):
        return {"L": [to_attribute(v) for v in value]}
    if isinstance(value, dict):
        return {"M": {str(k): to_attribute(v) for k, v in value.items()}}
    return {"S": json.dumps(value, default=str)}


def from_attribute(attr: dict[str, Any]) -> Any:
    """A DynamoDB attribute value as a JSON value."""
    kind, value = next(iter(attr.items()))
    if kind == "N":
        return float(value) if any(c in value for c in ".eE") else int(value)
    if kind == "L":
        return [from_attribute(v) for v in value]
    if kind == "M":
        return {k: from_attribute(v) for k, v in value.items()}
    if kind == "NULL":
        return None
    if kind in ("SS", "NS"):
        return [from_attribute({kind[0]: v}) for v in value]
    return value  # S, BOOL, B


def _unstringify(go_type: str, value: Any) -> Any:
    """Go's ``%v`` text of a scalar or a slice of scalars back as JSON (``"2"`` -> 2,
    ``"[1 2]"`` -> [1, 2]); other values as they are."""
    if not isinstance(value, str) or go_type == "string":
        return value
    item_type = go_type[2:] if go_type.startswith("[]") else go_type
    if item_type == "string" or item_type not in gotypes.GO_TYPES:
        return value
    try:
        if go_type.startswith("[]"):
            inner = value.strip()
            if not (inner.startswith("[") and inner.endswith("]")):
                return value
            return [_scalar(item_type, part) for part in inner[1:-1].split()]
        return _scalar(item_type, value)
    except ValueError:
        return value


def _scalar(go_type: str, text: str) -> Any:
    if go_type == "bool":
        return _GO_BOOL.get(text, text)
    if go_type.startswith("float"):
        return float(text)
    return int(text)


def _results(attr: dict[str, Any] | None) -> list[TaskResult] | None:
    if attr is None or "L" not in attr:
        return None
    results = []
    for entry in attr["L"]:
        fields = entry.get("M", {})
        go_type = str(from_attribute(fields.get("Type", {"S": ""})))
        value = _unstringify(go_type, from_attribute(fields.get("Value", {"NULL": True})))
        results.append(TaskResult(type=go_type, value=value))
    return results


def results_attribute(results: list[TaskResult] | None) -> dict[str, Any]:
    if results is None:
        return {"NULL": True}
    return {"L": [{"M": {"Type": {"S": r.type}, "Value": to_attribute(r.value)}} for r in results]}


def _text(item: dict[str, Any], name: str) -> str:
    return str(item.get(name, {}).get("S", ""))


def _time(item: dict[str, Any], name: str) -> Any:
    text = _text(item, name)
    try:
        return parse_time(text) if text else ZERO_TIME
    except ValueError:
        return ZERO_TIME


def _ttl(item: dict[str, Any]) -> int:
    raw = item.get("TTL", {}).get("N", "0")
    return int(float(raw))


def task_state(item: dict[str, Any]) -> TaskState:
    return TaskState(
        task_uuid=_text(item, "TaskUUID"),
        task_name=_text(item, "TaskName"),
        state=State(_text(item, "State") or "PENDING"),
        results=_results(item.get("Results")),
        error=_text(item, "Error"),
        created_at=_time(item, "CreatedAt"),
        ttl=_ttl(item),
    )


def expired(item: dict[str, Any], now: float) -> bool:
    """DynamoDB deletes expired items only eventually (within days): readers skip them."""
    ttl = _ttl(item)
    return 0 < ttl <= now


def group_item(meta: GroupMeta, ttl: int) -> dict[str, Any]:
    return {
        "GroupUUID": {"S": meta.group_uuid},
        "TaskUUIDs": {"L": [{"S": u} for u in meta.task_uuids]},
        "ChordTriggered": {"BOOL": meta.chord_triggered},
        "Lock": {"BOOL": meta.lock},
        "CreatedAt": {"S": format_time(meta.created_at)},
        "TTL": {"N": str(ttl)},
    }


def group_meta(item: dict[str, Any]) -> GroupMeta:
    uuids = from_attribute(item["TaskUUIDs"]) if "TaskUUIDs" in item else []
    return GroupMeta(
        group_uuid=_text(item, "GroupUUID"),
        task_uuids=[str(u) for u in uuids or []],
        chord_triggered=bool(item.get("ChordTriggered", {}).get("BOOL", False)),
        lock=bool(item.get("Lock", {}).get("BOOL", False)),
        created_at=_time(item, "CreatedAt"),
        ttl=_ttl(item),
    )
