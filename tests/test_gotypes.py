"""Go type names <-> Python values: all 29 arg types, as strictly as Go Machinery reads them."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from machinery_aio import gotypes
from machinery_aio.gotypes import GO_TYPES, PY_JSON, ArgTypeError, decode, decode_result, encode

ALL_29 = [
    "bool",
    "int",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "string",
    "[]bool",
    "[]int",
    "[]int8",
    "[]int16",
    "[]int32",
    "[]int64",
    "[]uint",
    "[]uint8",
    "[]uint16",
    "[]uint32",
    "[]uint64",
    "[]float32",
    "[]float64",
    "[]byte",
    "[]string",
]

# (type, JSON value, Python value) that Go accepts
VALID: list[tuple[str, Any, Any]] = [
    ("bool", True, True),
    ("int", -5, -5),
    ("int8", 127, 127),
    ("int16", -32768, -32768),
    ("int32", 2**31 - 1, 2**31 - 1),
    ("int64", -(2**63), -(2**63)),
    ("uint", 2**64 - 1, 2**64 - 1),
    ("uint8", 255, 255),
    ("uint16", 65535, 65535),
    ("uint32", 2**32 - 1, 2**32 - 1),
    ("uint64", 0, 0),
    ("float32", 1.5, 1.5),
    ("float64", 2, 2.0),  # any JSON number is a float
    ("string", "héllo", "héllo"),
    ("[]bool", [True, False], [True, False]),
    ("[]int", [1, -2], [1, -2]),
    ("[]int8", [-128, 127], [-128, 127]),
    ("[]int16", [1], [1]),
    ("[]int32", [1, 2, 3], [1, 2, 3]),
    ("[]int64", [2**63 - 1], [2**63 - 1]),
    ("[]uint", [1], [1]),
    ("[]uint8", [104, 105], b"hi"),
    ("[]uint16", [65535], [65535]),
    ("[]uint32", [7], [7]),
    ("[]uint64", [2**64 - 1], [2**64 - 1]),
    ("[]float32", [1, 2.5], [1.0, 2.5]),
    ("[]float64", [0.5], [0.5]),
    ("[]byte", "aGVsbG8=", b"hello"),
    ("[]string", ["a", "b"], ["a", "b"]),
]


def test_there_are_exactly_the_29_go_types() -> None:
    assert len(ALL_29) == 29
    assert frozenset(ALL_29) == GO_TYPES
    assert {t for t, _, _ in VALID} == GO_TYPES
    assert PY_JSON == "json"
    assert PY_JSON not in GO_TYPES


@pytest.mark.parametrize(("go_type", "value", "expected"), VALID, ids=[v[0] for v in VALID])
def test_every_go_type_decodes(go_type: str, value: Any, expected: Any) -> None:
    decoded = decode(go_type, value)
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize("go_type", [t for t in ALL_29 if t.startswith("[]")])
def test_null_slice_is_empty(go_type: str) -> None:
    assert decode(go_type, None) in ([], b"")


@pytest.mark.parametrize("go_type", ["[]byte", "[]uint8"])
def test_byte_slices_accept_base64_and_integer_lists(go_type: str) -> None:
    raw = bytes(range(256))
    assert decode(go_type, base64.b64encode(raw).decode()) == raw
    assert decode(go_type, list(raw)) == raw
    assert decode(go_type, "") == b""


@pytest.mark.parametrize(
    ("go_type", "value", "message"),
    [
        ("int64", 1.0, "not an integer literal"),
        ("int64", 1e3, "not an integer literal"),
        ("int", "1", "is not int"),
        ("int32", 2**31, "out of range for int32"),
        ("int8", -129, "out of range for int8"),
        ("int64", 2**63, "out of range for int64"),
        ("uint8", 256, "out of range for uint8"),
        ("uint64", -1, "out of range for uint64"),
        ("uint64", 2**64, "out of range for uint64"),
        ("uint", 1.5, "not an integer literal"),
        ("int64", True, "is not int64"),
        ("int64", None, "None is not int64"),
        ("bool", 1, "is not bool"),
        ("bool", "true", "is not bool"),
        ("string", 5, "is not string"),
        ("string", None, "is not string"),
        ("float64", "1.5", "is not float64"),
        ("float64", True, "is not float64"),
        pytest.param("float64", 10**400, "out of range for float64", id="float64-10**400"),
        ("float64", float("inf"), "out of range for float64"),
        ("[]int64", [1, 2.5], "not an integer literal"),
        ("[]int64", 5, "is not []int64"),
        ("[]string", "abc", "is not []string"),
        ("[]string", ["a", 1], "is not string"),
        ("[]bool", [1], "is not bool"),
        pytest.param("[]float32", [10**400], "out of range for float32", id="[]float32-10**400"),
        ("[]byte", "not base64!", "not base64"),
        ("[]uint8", [256], "out of range for uint8"),
        ("[]byte", 5, "is not []byte"),
        ("[]uint16", [-1], "out of range for uint16"),
    ],
)
def test_values_go_would_reject_are_rejected(go_type: str, value: Any, message: str) -> None:
    with pytest.raises(ArgTypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode(go_type, value)


@pytest.mark.parametrize("go_type", ["map[string]interface {}", "[][]int64", "time.Time", "", "Int64"])
def test_unknown_types_are_rejected_with_gos_message(go_type: str) -> None:
    with pytest.raises(ArgTypeError, match="is not one of supported types"):
        decode(go_type, 1)


def test_json_type_carries_anything() -> None:
    doc = {"a": [1, {"b": None}]}
    assert decode(PY_JSON, doc) == doc
    assert decode(PY_JSON, None) is None


def test_arg_type_error_is_a_value_error() -> None:
    assert issubclass(ArgTypeError, ValueError)


# -- encoding ------------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ("bool", True)),
        (1, ("int64", 1)),
        (-(2**63), ("int64", -(2**63))),
        (2**63, ("uint64", 2**63)),  # beyond int64: uint64
        (2**64 - 1, ("uint64", 2**64 - 1)),
        (2**64, (PY_JSON, 2**64)),  # beyond uint64: json
        (-(2**63) - 1, (PY_JSON, -(2**63) - 1)),
        (1.5, ("float64", 1.5)),
        ("s", ("string", "s")),
        (b"hello", ("[]byte", "aGVsbG8=")),
        (bytearray(b"\x00"), ("[]byte", "AA==")),
        ([1, 2], ("[]int64", [1, 2])),
        ((1, 2), ("[]int64", [1, 2])),
        ([True], ("[]bool", [True])),
        ([1.5], ("[]float64", [1.5])),
        (["a"], ("[]string", ["a"])),
        ([2**64], (PY_JSON, [2**64])),
        ([1, "a"], (PY_JSON, [1, "a"])),
        ([[1]], (PY_JSON, [[1]])),
        ({"a": 1}, (PY_JSON, {"a": 1})),
        (None, (PY_JSON, None)),
        (Point(x=1, y=2), (PY_JSON, {"x": 1, "y": 2})),
    ],
)
def test_encode_picks_go_type_names(value: Any, expected: tuple[str, Any]) -> None:
    assert encode(value) == expected


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (1, float, ("float64", 1.0)),
        ([], list[int], ("[]int64", [])),
        ([], list[str], ("[]string", [])),
        ([1, 2], list[float], ("[]float64", [1.0, 2.0])),
        ((1, 2), tuple[int, ...], ("[]int64", [1, 2])),
        ([1], Sequence[int], ("[]int64", [1])),
        (b"x", bytes, ("[]byte", "eA==")),
        # a hint that does not fit the value: typed by the value
        ("x", float, ("string", "x")),
        (True, float, ("bool", True)),
        (True, int, ("bool", True)),
        (["a"], list[float], ("[]string", ["a"])),
        ("x", bytes, ("string", "x")),
        # hints with no Go type
        ({"a": 1}, dict[str, int], (PY_JSON, {"a": 1})),
        (1, int | None, ("int64", 1)),
        ((1, "a"), tuple[int, str], (PY_JSON, [1, "a"])),
    ],
)
def test_encode_uses_the_annotation(value: Any, hint: Any, expected: tuple[str, Any]) -> None:
    assert encode(value, hint) == expected


def test_encoded_values_decode_back() -> None:
    for value in [True, 7, 2**64 - 1, 1.25, "x", b"\x00\xff", [1, 2], ["a"], [True], [0.5]]:
        go_type, json_value = encode(value)
        decoded = decode(go_type, json_value)
        assert decoded == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_cannot_be_sent(value: float) -> None:
    with pytest.raises(ArgTypeError, match="NaN or infinity"):
        encode(value)
    with pytest.raises(ArgTypeError, match="NaN or infinity"):
        encode(value, float)


def test_values_json_cannot_carry_fail_clearly() -> None:
    with pytest.raises(ArgTypeError, match="object value cannot be sent as JSON"):
        encode(object())


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (int, "int64"),
        (float, "float64"),
        (str, "string"),
        (bool, "bool"),
        (bytes, "[]byte"),
        (list[int], "[]int64"),
        (list[bool], "[]bool"),
        (tuple[str, ...], "[]string"),
        (list[bytes], None),
        (list[list[int]], None),
        (dict[str, int], None),
        (int | None, None),
        (tuple[int, int], None),
        (list, None),
        (Point, None),
        (Any, None),
    ],
)
def test_go_type_for_hint(hint: Any, expected: str | None) -> None:
    assert gotypes.go_type_for_hint(hint) == expected


def test_decode_result_passes_through_go_types_it_cannot_check() -> None:
    assert decode_result("map[string]interface {}", {"a": 1}) == {"a": 1}
    assert decode_result("main.Point", {"X": 1}) == {"X": 1}
    assert decode_result("int64", 5) == 5
    assert decode_result("[]uint8", "aGk=") == b"hi"
    assert decode_result(PY_JSON, {"a": None}) == {"a": None}
    # a result that does not fit its type is returned raw rather than lost
    assert decode_result("int64", 1.5) == 1.5
