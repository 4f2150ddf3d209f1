"""TaskFunction: a registered function's argument checks on the worker side, its results, and the
parts of a signature it reads (the TaskContext parameter, annotations written as strings).

The typed handle (``@server.task``, ``delay``, ``with_options``) is tested in test_server.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from machinery_aio import TaskContext
from machinery_aio.gotypes import ArgTypeError
from machinery_aio.tasks import TaskFunction


class Point(BaseModel):
    x: int
    y: int


async def moves(ctx: TaskContext, point: Point, steps: list[int], *more: float) -> Point:
    return point


def test_the_context_parameter_is_not_an_argument() -> None:
    function = TaskFunction("moves", moves)
    assert function.takes_context
    assert function.is_async
    assert list(function.call_signature.parameters) == ["point", "steps", "more"]
    assert not TaskFunction("plain", lambda a: a).takes_context


def test_values_are_converted_to_the_annotations() -> None:
    function = TaskFunction("moves", moves)
    converted = function.convert_args([{"x": 1, "y": 2}, [1, 2], 3, 4.5])
    assert converted == [Point(x=1, y=2), [1, 2], 3.0, 4.5]
    assert isinstance(converted[2], float)  # an int where a float is expected becomes one


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([{"x": 1}], "task 'moves' got 1 args; missing steps"),
        ([{"x": 1}, [1]], "task 'moves' arg 1: Field required (got {'x': 1})"),
        ([{"x": 1, "y": 2}, ["a"]], "task 'moves' arg 2: Input should be a valid integer"),
        ([{"x": 1, "y": 2}, [1], "fast"], "task 'moves' arg 3: expected float, got str 'fast'"),
        ([{"x": 1, "y": 2}, [1], True], "task 'moves' arg 3: expected float, got bool True"),
    ],
)
def test_bad_values_are_a_clear_arg_type_error(values: list[Any], message: str) -> None:
    with pytest.raises(ArgTypeError) as info:
        TaskFunction("moves", moves).convert_args(values)
    assert str(info.value).startswith(message)


def test_a_bool_is_not_an_int() -> None:
    def count(n: int) -> int:
        return n

    with pytest.raises(ArgTypeError, match="arg 1: expected int, got bool True"):
        TaskFunction("count", count).convert_args([True])
    assert TaskFunction("count", count).convert_args([3]) == [3]


def test_unannotated_and_any_parameters_take_anything() -> None:
    def loose(a, b: Any, c: object):  # type: ignore[no-untyped-def]
        return a

    assert TaskFunction("loose", loose).convert_args([{"k": 1}, [None], "x"]) == [{"k": 1}, [None], "x"]


def test_the_result_adapter_follows_the_return_annotation() -> None:
    function = TaskFunction("moves", moves)
    adapter = function.result_adapter()
    assert adapter is not None
    assert adapter.validate_python({"x": 1, "y": 2}) == Point(x=1, y=2)
    assert function.result_adapter() is adapter  # built once
    assert TaskFunction("plain", lambda: 1).result_adapter() is None

    def number() -> int:
        return 1

    assert TaskFunction("number", number).result_adapter() is None  # plain types need none


def test_results_carry_go_types() -> None:
    def pair() -> tuple[int, str]:
        return 1, "a"

    results = TaskFunction("pair", pair).to_results((1, "a"))
    assert [(r.type, r.value) for r in results] == [("int64", 1), ("string", "a")]


def test_hints_that_cannot_be_resolved_are_ignored() -> None:
    def odd(a: NotDefinedAnywhere) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    function = TaskFunction("odd", odd)
    assert function.convert_args(["anything"]) == ["anything"]
    assert repr(function).startswith("<TaskFunction odd ")
