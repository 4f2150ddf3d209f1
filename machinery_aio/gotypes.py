"""Go type names on the wire, and the Python values they stand for.

Go Machinery types every argument and result with one of 29 Go type names
(``int64``, ``[]string``...). :func:`encode` picks the name for a Python value
(or from a type hint), :func:`decode` checks a value against a name as
strictly as Go does. Values Go cannot carry (dicts, None, pydantic models,
nested lists) travel under the extra name ``json``: Python workers read them,
Go workers reject them with "json is not one of supported types".
"""

from __future__ import annotations

import base64
import binascii
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_jsonable_python

__all__ = [
    "GO_TYPES",
    "PY_JSON",
    "ArgTypeError",
    "decode",
    "decode_result",
    "encode",
    "go_type_for_hint",
]

PY_JSON = "json"
"""The Python-only type name for values Go cannot read (dicts, None, models)."""

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**63), 2**63 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**64 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOATS = frozenset({"float32", "float64"})
_SCALARS = frozenset({"bool", "string", *_INT_RANGES, *_FLOATS})
_BYTES = frozenset({"[]byte", "[]uint8"})
GO_TYPES: frozenset[str] = frozenset({*_SCALARS, *(f"[]{t}" for t in _SCALARS), "[]byte"})
"""The 29 type names a Go Machinery worker accepts."""


class ArgTypeError(ValueError):
    """A value does not fit its declared Go type, or the type is unknown."""


def _check_scalar(go_type: str, value: Any) -> Any:
    if go_type == "string":
        if isinstance(value, str):
            return value
    elif go_type == "bool":
        if isinstance(value, bool):
            return value
    elif go_type in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ArgTypeError(f"{value!r:.40} is out of range for {go_type}")
            return number
    else:
        low, high = _INT_RANGES[go_type]
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return value
            raise ArgTypeError(f"{value} is out of range for {go_type}")
        if isinstance(value, float):
            raise ArgTypeError(f"{value!r} is not an integer literal, as {go_type} needs")
    raise ArgTypeError(f"{value!r} is not {go_type}")


def decode(go_type: str, value: Any) -> Any:
    """Check a JSON value against a Go type name and return the Python value.

    ``[]byte``/``[]uint8`` give :class:`bytes` (from base64 or a list of
    integers); ``null`` for a slice gives an empty list, as in Go.
    """
    if go_type in _SCALARS:
        return _check_scalar(go_type, value)
    if go_type == PY_JSON:
        return value
    if go_type in _BYTES:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ArgTypeError(f"{value!r} is not base64 for {go_type}") from exc
        if value is None:
            return b""
        if isinstance(value, list):
            return bytes(_check_scalar("uint8", item) for item in value)
        raise ArgTypeError(f"{value!r} is not {go_type}")
    if go_type.startswith("[]") and go_type[2:] in _SCALARS:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ArgTypeError(f"{value!r} is not {go_type}")
        item_type = go_type[2:]
        return [_check_scalar(item_type, item) for item in value]
    raise ArgTypeError(f"{go_type} is not one of supported types")


def decode_result(go_type: str, value: Any) -> Any:
    """Like :func:`decode`, but any other Go type name gives the raw JSON value.

    Go tasks may return maps or structs (``map[string]interface {}``); their
    JSON is passed through as it is.
    """
    if go_type in GO_TYPES or go_type == PY_JSON:
        try:
            return decode(go_type, value)
        except ArgTypeError:
            return value
    return value


def _slice_type(values: Sequence[Any]) -> str | None:
    if not values:
        return None
    if all(isinstance(v, bool) for v in values):
        return "[]bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        low, high = _INT_RANGES["int64"]
        if all(low <= v <= high for v in values):
            return "[]int64"
        return None
    if all(isinstance(v, float) for v in values):
        return "[]float64" if all(math.isfinite(v) for v in values) else None
    if all(isinstance(v, str) for v in values):
        return "[]string"
    return None


def encode(value: Any, hint: Any = None) -> tuple[str, Any]:
    """Return ``(go_type, json_value)`` for a Python value.

    ``hint`` is the parameter's or return value's annotation, if known; it
    picks the Go type of an empty list or of an int meant as a float.
    """
    go_hint = go_type_for_hint(hint) if hint is not None else None
    if go_hint is not None:
        try:
            return go_hint, _encode_as(go_hint, value)
        except ArgTypeError:
            pass
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        if _INT_RANGES["int64"][0] <= value <= _INT_RANGES["int64"][1]:
            return "int64", value
        if 0 <= value <= _INT_RANGES["uint64"][1]:
            return "uint64", value
        return PY_JSON, value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ArgTypeError(f"{value!r} cannot be sent: JSON has no NaN or infinity")
        return "float64", value
    if isinstance(value, str):
        return "string", value
    if isinstance(value, bytes | bytearray | memoryview):
        return "[]byte", base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        slice_type = _slice_type(value)
        if slice_type is not None:
            return slice_type, list(value)
    try:
        return PY_JSON, to_jsonable_python(value)
    except Exception as exc:
        raise ArgTypeError(f"{type(value).__name__} value cannot be sent as JSON: {exc}") from exc


def _encode_as(go_type: str, value: Any) -> Any:
    if go_type in _BYTES:
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(value)).decode("ascii")
        raise ArgTypeError(f"{value!r} is not {go_type}")
    if go_type in _FLOATS and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if go_type in _FLOATS and isinstance(value, float) and not math.isfinite(value):
        raise ArgTypeError(f"{value!r} cannot be sent: JSON has no NaN or infinity")
    if go_type.startswith("[]"):
        if not isinstance(value, list | tuple):
            raise ArgTypeError(f"{value!r} is not {go_type}")
        item_type = go_type[2:]
        return [_encode_as(item_type, item) for item in value]
    return _check_scalar(go_type, value)


_HINTS: dict[Any, str] = {
    bool: "bool",
    int: "int64",
    float: "float64",
    str: "string",
    bytes: "[]byte",
}


def go_type_for_hint(hint: Any) -> str | None:
    """The Go type name for an annotation such as ``int`` or ``list[str]``, if any."""
    if hint in _HINTS:
        return _HINTS[hint]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence, typing.Sequence):
        params = typing.get_args(hint)
        if origin is tuple and not (len(params) == 2 and params[1] is Ellipsis):
            return None
        if params and params[0] in _HINTS and params[0] is not bytes:
            return "[]" + _HINTS[params[0]]
        return None
    if origin in (typing.Union, types.UnionType):
        return None
    return None
