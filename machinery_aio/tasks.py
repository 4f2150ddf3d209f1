"""Registered task functions, and the typed ``Task`` handle ``@server.task`` returns."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pydantic import TypeAdapter, ValidationError

from . import gotypes
from .context import TaskContext
from .ratelimit import Rate, parse_rate
from .signature import Arg, Signature
from .state import TaskResult, value_to_results

if TYPE_CHECKING:
    from .publisher import Publisher
    from .result import AsyncResult

__all__ = ["Task", "TaskFunction"]

P = ParamSpec("P")
R = TypeVar("R")

_SIMPLE = (int, float, str, bool, bytes)
_NO_HINT: Any = inspect.Parameter.empty
_PLAIN_RESULTS = (int, float, str, bool, bytes, type(None), None)
_UNSET = object()


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


def _is_context(param: inspect.Parameter, hints: dict[str, Any]) -> bool:
    hint = hints.get(param.name, param.annotation)
    if isinstance(hint, type) and issubclass(hint, TaskContext):
        return True
    return isinstance(hint, str) and hint.rsplit(".", 1)[-1] == "TaskContext"


class TaskFunction:
    """A function registered under a task name, with what is needed to call it."""

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        time_limit: float | None = None,
        rate_limit: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"task {name!r} must be callable, got {type(fn).__name__}")
        if not name:
            raise ValueError("a task needs a non-empty name")
        if time_limit is not None and time_limit <= 0:
            raise ValueError("time_limit must be positive seconds")
        self.name = name
        self.fn = fn
        self.time_limit = time_limit
        self.rate_limit: Rate | None = None if rate_limit is None else parse_rate(rate_limit)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - async callables
        )
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])
        hints = _resolve_hints(fn)
        params = list(sig.parameters.values())
        self.takes_context = bool(params) and _is_context(params[0], hints)
        if self.takes_context:
            params = params[1:]
        self.call_signature = sig.replace(parameters=params)
        self.return_hint: Any = hints.get("return", _NO_HINT)
        self._positional: list[tuple[str, Any]] = []
        self._var_hint: Any = None
        self._accepts_var = False
        self._required = 0
        self._fast_bind = True  # a call giving every positional parameter needs no bind()
        for param in params:
            hint = hints.get(param.name, _NO_HINT)
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self._positional.append((param.name, hint))
                if param.default is param.empty:
                    self._required += 1
            elif param.kind is param.VAR_POSITIONAL:
                self._accepts_var = True
                self._var_hint = hint
            elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
                self._fast_bind = False
        self._adapters: dict[int, TypeAdapter[Any]] = {}
        self._result_adapter: TypeAdapter[Any] | object | None = _UNSET

    # -- producer side -----------------------------------------------------------

    def hint_for(self, index: int) -> Any:
        if index < len(self._positional):
            return self._positional[index][1]
        return self._var_hint if self._accepts_var else _NO_HINT

    def build_args(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Arg]:
        """Check a call against the function and type each value with Go's names."""
        if self._fast_bind and not kwargs and len(args) == len(self._positional):
            values: Sequence[Any] = args  # every positional parameter given: nothing to bind
        else:
            values = self._bind(args, kwargs)
        hints = (self.hint_for(index) for index in range(len(values)))
        return [
            Arg.of(value, None if hint is _NO_HINT else hint)
            for value, hint in zip(values, hints, strict=True)
        ]

    def _bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        try:
            bound = self.call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}: {exc}") from None
        extra = dict(bound.kwargs)  # given for keyword-only parameters; defaults may stay
        bound.apply_defaults()
        if extra:
            raise TypeError(
                f"task {self.name!r}: keyword-only parameters cannot travel as Go Machinery "
                f"args (positional only): {', '.join(extra)}"
            )
        return bound.args

    # -- worker side -------------------------------------------------------------

    def convert_args(self, values: list[Any]) -> list[Any]:
        """Check decoded arg values against the parameters' annotations.

        Raises :class:`~machinery_aio.gotypes.ArgTypeError` with a clear message.
        """
        count = len(values)
        if count > len(self._positional) and not self._accepts_var:
            raise gotypes.ArgTypeError(
                f"task {self.name!r} takes {len(self._positional)} args but got {count}"
            )
        if count < self._required:
            missing = [name for name, _ in self._positional[count : self._required]]
            raise gotypes.ArgTypeError(f"task {self.name!r} got {count} args; missing {', '.join(missing)}")
        return [self._convert(i, value) for i, value in enumerate(values)]

    def _convert(self, index: int, value: Any) -> Any:
        hint = self.hint_for(index)
        if hint is _NO_HINT or hint is Any or hint is object:
            return value
        if hint in _SIMPLE:
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
                return value
            raise gotypes.ArgTypeError(
                f"task {self.name!r} arg {index + 1}: expected {hint.__name__}, "
                f"got {type(value).__name__} {value!r:.60}"
            )
        adapter = self._adapters.get(index)
        if adapter is None:
            try:
                adapter = self._adapters[index] = TypeAdapter(hint)
            except Exception:
                return value
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise gotypes.ArgTypeError(
                f"task {self.name!r} arg {index + 1}: {first['msg']} (got {value!r:.60})"
            ) from None

    def result_adapter(self) -> TypeAdapter[Any] | None:
        """Converts a returned value back to the return annotation; None for plain types.

        Built once per task, not per call: building a TypeAdapter is costly.
        """
        if self._result_adapter is _UNSET:
            hint = self.return_hint
            adapter: TypeAdapter[Any] | None = None
            if hint not in _PLAIN_RESULTS and hint is not Any and hint is not _NO_HINT:
                try:
                    adapter = TypeAdapter(hint)
                except Exception:
                    adapter = None
            self._result_adapter = adapter
        return self._result_adapter  # type: ignore[return-value]

    def to_results(self, value: Any) -> list[TaskResult]:
        hint = None if self.return_hint is _NO_HINT else self.return_hint
        return value_to_results(value, hint)

    def __repr__(self) -> str:
        return f"<TaskFunction {self.name} {getattr(self.fn, '__qualname__', self.fn)!s}>"


_OPTION_FIELDS = frozenset(
    {
        "routing_key",
        "retry_count",
        "retry_timeout",
        "priority",
        "immutable",
        "headers",
        "ignore_when_task_not_registered",
        "broker_message_group_id",
        "stop_task_deletion_on_error",
    }
)


class Task(Generic[P, R]):
    """A registered task: ``await add.delay(1, 2)`` sends it and returns an AsyncResult.

    ``add.with_options(countdown=5, retry_count=3).delay(1, 2)`` sets per-call
    options; ``add.signature(1, 2)`` builds a Signature for workflows; ``add.fn``
    is the plain function.
    """

    def __init__(
        self, publisher: Publisher, function: TaskFunction, options: dict[str, Any] | None = None
    ) -> None:
        self.publisher = publisher
        self.function = function
        self.options: dict[str, Any] = dict(options or {})

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def fn(self) -> Callable[..., Any]:
        return self.function.fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, in this process."""
        return self.function.fn(*args, **kwargs)

    def with_options(
        self,
        *,
        eta: datetime | None = None,
        countdown: float | None = None,
        routing_key: str | None = None,
        retry_count: int | None = None,
        retry_timeout: int | None = None,
        priority: int | None = None,
        immutable: bool | None = None,
        headers: dict[str, Any] | None = None,
        ignore_when_task_not_registered: bool | None = None,
        broker_message_group_id: str | None = None,
        stop_task_deletion_on_error: bool | None = None,
    ) -> Task[P, R]:
        """A copy of this handle whose signatures carry these options.

        ``countdown`` (seconds from now) and ``eta`` (an aware datetime) delay the task.
        """
        given = {k: v for k, v in locals().items() if k != "self" and v is not None}
        if priority is not None and not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0 to 255 (Go's uint8), got {priority}")
        if "eta" in given and "countdown" in given:
            raise ValueError("give eta or countdown, not both")
        if "eta" in given:
            eta_value: datetime = given["eta"]
            if eta_value.tzinfo is None:
                raise ValueError("eta must be a timezone-aware datetime")
        return Task(self.publisher, self.function, {**self.options, **given})

    def signature(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """A Signature for this call, with this handle's options; not sent."""
        return self._build(args, kwargs)

    def _build(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Signature:
        sig = Signature.for_call(self.name, self.function.build_args(args, kwargs))
        for key, value in self.options.items():
            if key in _OPTION_FIELDS:
                setattr(sig, key, value)
        if "countdown" in self.options:
            sig.eta = datetime.now(UTC) + timedelta(seconds=self.options["countdown"])
        elif "eta" in self.options:
            sig.eta = self.options["eta"]
        return sig

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task and return its AsyncResult; ``await result.get()`` gives the value."""
        result = await self.publisher.send_task(self._build(args, kwargs))
        return result.typed(self.function.result_adapter())

    async def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[R]:
        """Celery-style: ``apply_async((1, 2), countdown=5)``; options as :meth:`with_options`."""
        handle = self.with_options(**options) if options else self
        result = await self.publisher.send_task(handle._build(args, kwargs or {}))
        return result.typed(self.function.result_adapter())

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
