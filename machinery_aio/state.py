"""Task states, results and group metadata, stored in Go Machinery's JSON shapes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError

from . import gotime, gotypes
from .signature import GoTime, Signature, _GoModel

__all__ = [
    "GroupMeta",
    "Progress",
    "State",
    "TaskResult",
    "TaskState",
    "results_to_value",
    "value_to_results",
]


class State(StrEnum):
    """A task's state, as the strings Go Machinery stores."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


COMPLETED = frozenset({State.SUCCESS, State.FAILURE})


class TaskResult(_GoModel):
    """One return value: ``{"Type": <Go type name>, "Value": <json>}``."""

    type: str
    value: Any = None

    def python_value(self) -> Any:
        return gotypes.decode_result(self.type, self.value)


class Progress(_GoModel):
    """How far a running task got (``ctx.set_progress``): ``{"Current","Total","Message"}``."""

    current: int | float = 0
    total: int | float | None = None
    message: str = ""


_WITHOUT_PROGRESS = {"progress"}


class TaskState(_GoModel):
    """A task's state record: ``{"TaskUUID","TaskName","State","Results","Error","CreatedAt","TTL"}``,
    and ``"Progress"`` after them while a running task reports progress (Go ignores it).
    """

    task_uuid: str = ""
    task_name: str = ""
    state: State = State.PENDING
    results: list[TaskResult] | None = None
    error: str = ""
    created_at: GoTime = gotime.ZERO_TIME
    ttl: int = 0
    progress: Progress | None = None

    def is_completed(self) -> bool:
        return self.state in COMPLETED

    def is_success(self) -> bool:
        return self.state is State.SUCCESS

    def is_failure(self) -> bool:
        return self.state is State.FAILURE

    @property
    def value(self) -> Any:
        """The results as Python: None for none, the value for one, a tuple for several."""
        return results_to_value(self.results)

    def to_json(self) -> bytes:
        """Go's seven keys in Go's order; ``"Progress"`` last, only when there is progress."""
        if self.progress is None:
            return self.__pydantic_serializer__.to_json(self, by_alias=True, exclude=_WITHOUT_PROGRESS)
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> TaskState:
        return cls.from_go_json(data)

    @classmethod
    def _nested_models(cls) -> dict[str, type[_GoModel]]:
        return {"Results": TaskResult, "Progress": Progress}

    @classmethod
    def new(
        cls,
        signature: Signature,
        state: State,
        results: list[TaskResult] | None = None,
        error: str = "",
        created_at: datetime | None = None,
    ) -> TaskState:
        """A state for ``signature``. Only PENDING stamps ``created_at``; backends carry it on."""
        if created_at is None:
            created_at = gotime.now() if state is State.PENDING else gotime.ZERO_TIME
        return cls._trusted(
            {
                "task_uuid": signature.uuid,
                "task_name": signature.name,
                "state": state,
                "results": results,
                "error": error,
                "created_at": created_at,
                "ttl": 0,
                "progress": None,
            }
        )

    def __repr__(self) -> str:
        return f"<TaskState {self.task_uuid} {self.state.value}>"


class GroupMeta(_GoModel):
    """A group's record: its member UUIDs in order and whether its chord fired."""

    group_uuid: str = ""
    task_uuids: list[str] = Field(default_factory=list)
    chord_triggered: bool = False
    lock: bool = False
    created_at: GoTime = gotime.ZERO_TIME
    ttl: int = 0

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> GroupMeta:
        return cls.from_go_json(data)


def value_to_results(value: Any, hint: Any = None) -> list[TaskResult]:
    """A task's return value as TaskResults: a tuple is several results, None is none."""
    if value is None:
        return []
    if isinstance(value, tuple):
        hints = _tuple_hints(hint, len(value))
        return [_one_result(item, h) for item, h in zip(value, hints, strict=True)]
    return [_one_result(value, hint)]


def _one_result(value: Any, hint: Any) -> TaskResult:
    go_type, json_value = gotypes.encode(value, hint)
    return TaskResult._trusted({"type": go_type, "value": json_value})


def _tuple_hints(hint: Any, size: int) -> list[Any]:
    import typing

    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == size and Ellipsis not in args:
            return list(args)
    return [None] * size


def results_to_value(results: list[TaskResult] | None) -> Any:
    """The inverse of :func:`value_to_results`."""
    if not results:
        return None
    if len(results) == 1:
        return results[0].python_value()
    return tuple(r.python_value() for r in results)


def parse_state(data: bytes | str | None) -> TaskState | None:
    """Decode a stored state, or None for a missing or unreadable record."""
    if data is None:
        return None
    try:
        return TaskState.from_go_json(data)
    except ValidationError:
        return None
