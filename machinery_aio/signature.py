"""Signature and Arg: one task invocation, as Go Machinery puts it on the wire."""

from __future__ import annotations

import functools
import json
import uuid as _uuid
from datetime import datetime
from typing import Annotated, Any, Self

import pydantic_core
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
)

from . import gotypes
from .gotime import coerce_time, format_time

__all__ = [
    "Arg",
    "GoTime",
    "InvalidMessageError",
    "Signature",
    "new_chord_uuid",
    "new_group_uuid",
    "new_task_uuid",
]


def new_task_uuid() -> str:
    return f"task_{_uuid.uuid4()}"


def new_group_uuid() -> str:
    return f"group_{_uuid.uuid4()}"


def new_chord_uuid() -> str:
    return f"chord_{_uuid.uuid4()}"


GoTime = Annotated[
    datetime,
    PlainValidator(coerce_time),
    PlainSerializer(format_time, return_type=str, when_used="json"),
]
"""An aware datetime written as Go's RFC 3339 with nanoseconds."""


class InvalidMessageError(ValueError):
    """A message body that is not a valid Signature; ``reason`` says why."""

    def __init__(self, reason: str, task_uuid: str = "", task_name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.task_uuid = task_uuid
        self.task_name = task_name


_GO_SPELLINGS = {
    "uuid": "UUID",
    "eta": "ETA",
    "ttl": "TTL",
    "group_uuid": "GroupUUID",
    "task_uuid": "TaskUUID",
    "task_uuids": "TaskUUIDs",
    "sqs_receipt_handle": "SQSReceiptHandle",
}


def go_name(field: str) -> str:
    """The Go field name (JSON key) of a snake_case attribute: ``routing_key`` -> ``RoutingKey``."""
    return _GO_SPELLINGS.get(field) or "".join(part.capitalize() for part in field.split("_"))


class _GoModel(BaseModel):
    """Go's encoding/json: PascalCase keys, matched case-insensitively; unknown keys ignored.

    The model itself takes exact keys (Go's or the snake_case names) and rejects
    others, so the common case validates straight from JSON; :meth:`from_go_json`
    falls back to Go's tolerant key matching when that fails.
    """

    # Go's names come from an alias generator rather than ``Field(alias=...)``, so type checkers
    # (which read ``alias`` as the constructor's keyword) see the snake_case names.
    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=go_name, serialization_alias=go_name),
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )

    @classmethod
    def from_go_json(cls, data: bytes | str) -> Self:
        """Decode JSON as Go does; raises pydantic's ValidationError."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            try:
                doc = pydantic_core.from_json(data)
            except ValueError:
                deep = _deep_json(data)
                if deep is None:
                    raise exc from None  # it says the JSON is invalid
                return cls.model_validate(cls.go_keys(deep))
        return cls.model_validate_json(pydantic_core.to_json(cls.go_keys(doc)))

    @classmethod
    def go_keys(cls, data: Any) -> Any:
        """``data`` with keys matched to this model's as Go matches them, unknown keys dropped."""
        if not isinstance(data, dict):
            return data
        names, lower = cls.__dict__.get("_keys") or _install_keys(cls)
        fixed: dict[str, Any] = {}
        for key, value in data.items():
            alias = names.get(key) or lower.get(key.lower())
            if alias is not None:
                fixed.setdefault(alias, value)
        for alias, model in cls._nested_models().items():
            value = fixed.get(alias)
            if isinstance(value, list):
                fixed[alias] = [model.go_keys(item) for item in value]
            elif value is not None:
                fixed[alias] = model.go_keys(value)
        return fixed

    @classmethod
    def _nested_models(cls) -> dict[str, type[_GoModel]]:
        """Alias -> model, for the fields holding a nested model or a list of them."""
        return {}

    @classmethod
    def _trusted(cls, fields: dict[str, Any]) -> Self:
        """An instance of values this package made itself: every field by name, no validation.

        ``model_construct`` without its per-call overhead, for objects made per task.
        """
        obj = cls.__new__(cls)
        _set = object.__setattr__
        _set(obj, "__dict__", fields)
        _set(obj, "__pydantic_fields_set__", set(fields))
        _set(obj, "__pydantic_extra__", None)
        _set(obj, "__pydantic_private__", None)
        return obj


def _install_keys(cls: type[BaseModel]) -> tuple[dict[str, str], dict[str, str]]:
    """(exact key or field name -> Go key, lower-cased Go key -> Go key), cached on ``cls``."""
    names: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        alias = info.serialization_alias or name
        names[name] = names[alias] = alias
    keys = names, {alias.lower(): alias for alias in names.values()}
    type.__setattr__(cls, "_keys", keys)
    return keys


class Arg(_GoModel):
    """A typed positional argument: ``{"Name","Type","Value"}``.

    ``type`` is a Go type name (``int64``, ``[]string`` ...) or ``json`` for
    Python-only values. Use :meth:`Arg.of` to pick the type from a value.
    """

    name: str = ""
    type: str
    value: Any = None

    @classmethod
    def of(cls, value: Any, hint: Any = None, name: str = "") -> Arg:
        """Build an Arg from a Python value (``hint``: the parameter's annotation)."""
        go_type, json_value = gotypes.encode(value, hint)
        return cls._trusted({"name": name, "type": go_type, "value": json_value})

    def python_value(self) -> Any:
        """The Python value, checked against ``type`` as strictly as Go does."""
        return gotypes.decode(self.type, self.value)


class Signature(_GoModel):
    """One task invocation. Attributes are Go's field names in snake_case.

    Serialized with :meth:`to_json` it is byte for byte what Go's
    ``json.Marshal`` writes for ``tasks.Signature``.
    """

    uuid: str = ""
    name: str = ""
    routing_key: str = ""
    eta: GoTime | None = None
    group_uuid: str = ""
    group_task_count: int = 0
    args: list[Arg] | None = None
    headers: dict[str, Any] | None = None
    priority: int = Field(default=0, ge=0, le=255)
    immutable: bool = False
    retry_count: int = 0
    retry_timeout: int = 0
    on_success: list[Signature] | None = None
    on_error: list[Signature] | None = None
    chord_callback: Signature | None = None
    broker_message_group_id: str = ""
    sqs_receipt_handle: str = ""
    stop_task_deletion_on_error: bool = False
    ignore_when_task_not_registered: bool = False

    def to_json(self) -> bytes:
        """Go's compact JSON: all 19 keys in Go's order."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    @classmethod
    def from_json(cls, data: bytes | str) -> Signature:
        """Decode a message body; raise :class:`InvalidMessageError` with a clear reason."""
        try:
            sig = cls.from_go_json(data)
        except ValidationError as exc:
            raise _invalid(data, exc) from None
        if not sig.name:
            raise InvalidMessageError("message has no task Name", sig.uuid)
        if not sig.uuid:
            raise InvalidMessageError("message has no task UUID", "", sig.name)
        return sig

    @classmethod
    def _nested_models(cls) -> dict[str, type[_GoModel]]:
        return {"Args": Arg, "OnSuccess": Signature, "OnError": Signature, "ChordCallback": Signature}

    @classmethod
    def for_call(cls, name: str, args: list[Arg]) -> Signature:
        """A new Signature of ``name`` with ``args`` built by :meth:`Arg.of` (not validated
        again); every other field has its default."""
        return cls._trusted({**_signature_defaults(), "name": name, "args": args})

    def copy_fresh(self) -> Signature:
        """A deep copy (nested callbacks included), as Go's ``CopySignature``."""
        return Signature.from_go_json(self.to_json())

    def python_args(self) -> list[Any]:
        """Decoded argument values; raises :class:`~machinery_aio.gotypes.ArgTypeError`."""
        return [arg.python_value() for arg in self.args or ()]

    def __repr__(self) -> str:
        return f"<Signature {self.name} {self.uuid}>"


@functools.cache
def _signature_defaults() -> dict[str, Any]:
    return {
        name: info.get_default(call_default_factory=True) for name, info in Signature.model_fields.items()
    }


def _deep_json(data: bytes | str) -> Any:
    """``data`` decoded by the standard library when pydantic's parser refused it only for
    its nesting (a chain of more than 100 links, which Go sends), else None."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _invalid(data: bytes | str, exc: ValidationError) -> InvalidMessageError:
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"type": "", "msg": str(exc), "loc": ()}
    if first["type"] == "json_invalid":
        reason = f"message is not valid JSON: {first['msg']}"
    elif first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        reason = "message is not a JSON object, so not a Signature"
    else:
        where = ".".join(str(part) for part in first["loc"])
        reason = f"message is not a valid Signature: {where}: {first['msg']}"
        if len(errors) > 1:
            reason += f" (and {len(errors) - 1} more errors)"
    uuid, name = _salvage_ids(data)
    return InvalidMessageError(reason, uuid, name)


def _salvage_ids(data: bytes | str) -> tuple[str, str]:
    """Best-effort UUID and Name from an invalid body, to record a FAILURE state."""
    import json

    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    lowered = {str(k).lower(): v for k, v in doc.items()}
    uuid, name = lowered.get("uuid"), lowered.get("name")
    return (uuid if isinstance(uuid, str) else ""), (name if isinstance(name, str) else "")
