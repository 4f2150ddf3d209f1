"""Middleware: code that runs around every publish and every task run.

Subclass :class:`Middleware` and override the hooks you need; register it with
``server.add_middleware(...)`` or ``Server(config, middlewares=[...])``.
Tracing, metrics, audit logs and Go Machinery's handlers
(``set_pre_publish_handler``, ``Worker.set_pre_task_handler`` ...) are built on
this seam. A hook that raises is logged and never costs a task: the publish
or the run goes on.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .context import TaskContext
from .log import get_logger
from .signature import Signature
from .state import State

__all__ = ["Middleware", "Middlewares", "TaskOutcome"]

logger = get_logger("machinery_aio.middleware")

HOOKS = ("before_publish", "after_publish", "before_task", "after_task")


@dataclass(slots=True)
class TaskOutcome:
    """How one run of a task ended, as ``after_task`` sees it.

    ``state`` is SUCCESS, FAILURE or RETRY (this run failed and the task will run
    again). ``results`` are the returned values (a tuple return gives several),
    ``error`` the stored error text (None on success), ``exception`` what the task
    raised, ``duration`` the seconds from ``before_task`` to the outcome.
    """

    state: State
    results: list[Any] = field(default_factory=list)
    error: str | None = None
    exception: BaseException | None = None
    duration: float = 0.0


class Middleware:
    """Override any of the four hooks; the others cost nothing.

    ``before_task`` and ``after_task`` get the same :class:`TaskContext`, so a
    middleware can keep what it needs for one run in ``ctx.data`` (a span, a start
    time). ``before_publish`` runs once ``signature.uuid`` is set and may change
    the signature (add headers); ``after_publish`` runs once the broker has it.
    """

    async def before_publish(self, signature: Signature) -> None:
        """Called before a signature is published (sends, callbacks, retries)."""

    async def after_publish(self, signature: Signature) -> None:
        """Called after a signature was published."""

    async def before_task(self, ctx: TaskContext) -> None:
        """Called before a worker runs a task."""

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        """Called after a run, once its state is recorded."""


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class Middlewares:
    """An ordered chain of middlewares, optionally behind a parent chain (a worker's own
    handlers behind the server's). ``before_*`` hooks run in order, ``after_*`` hooks in
    reverse order; only middlewares that override a hook are called for it."""

    __slots__ = (
        "_items",
        "_parent",
        "_seen",
        "_seen_parent",
        "after_publish_hooks",
        "after_task_hooks",
        "before_publish_hooks",
        "before_task_hooks",
        "version",
    )

    def __init__(self, middlewares: Iterable[Middleware] = (), parent: Middlewares | None = None) -> None:
        self._items: list[Middleware] = []
        self._parent = parent
        self._seen = self._seen_parent = -1
        self.version = 0
        self.before_publish_hooks: list[Callable[..., Any]] = []
        self.after_publish_hooks: list[Callable[..., Any]] = []
        self.before_task_hooks: list[Callable[..., Any]] = []
        self.after_task_hooks: list[Callable[..., Any]] = []
        for middleware in middlewares:
            self.add(middleware)
        self._rebuild()

    def add(self, middleware: Middleware) -> None:
        """Append ``middleware`` to the chain."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"expected a Middleware, got {type(middleware).__name__}")
        self._items.append(middleware)
        self.version += 1

    def __iter__(self) -> Iterator[Middleware]:
        return iter([*(self._parent or ()), *self._items])

    def __len__(self) -> int:
        return len(self._items) + (len(self._parent) if self._parent is not None else 0)

    def _fresh(self) -> None:
        """Rebuild the hook lists if this chain or its parent changed."""
        parent = self._parent
        if self._seen != self.version or (parent is not None and self._seen_parent != parent.version):
            self._rebuild()

    def _rebuild(self) -> None:
        chain = list(self)
        for hook in HOOKS:
            bound = [_as_coroutine(getattr(m, hook)) for m in chain if _overrides(m, hook)]
            if hook.startswith("after"):
                bound.reverse()
            setattr(self, f"{hook}_hooks", bound)
        self._seen = self.version
        self._seen_parent = self._parent.version if self._parent is not None else -1

    # -- running the hooks (each catches and logs, so a failing hook costs no task) -----

    async def before_publish(self, signature: Signature) -> None:
        self._fresh()
        for hook in self.before_publish_hooks:
            try:
                await hook(signature)
            except Exception:
                _failed(hook, signature.uuid)

    async def after_publish(self, signature: Signature) -> None:
        self._fresh()
        for hook in self.after_publish_hooks:
            try:
                await hook(signature)
            except Exception:
                _failed(hook, signature.uuid)

    async def before_task(self, ctx: TaskContext) -> None:
        self._fresh()
        for hook in self.before_task_hooks:
            try:
                await hook(ctx)
            except Exception:
                _failed(hook, ctx.task_uuid)

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        self._fresh()
        for hook in self.after_task_hooks:
            try:
                await hook(ctx, outcome)
            except Exception:
                _failed(hook, ctx.task_uuid)

    @property
    def publishing(self) -> bool:
        """True if any middleware has a publish hook (the publisher skips them otherwise)."""
        self._fresh()
        return bool(self.before_publish_hooks or self.after_publish_hooks)

    @property
    def running(self) -> bool:
        """True if any middleware has a task hook (the runner skips them otherwise)."""
        self._fresh()
        return bool(self.before_task_hooks or self.after_task_hooks)


def _as_coroutine(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``method`` itself if it is ``async def``; else a coroutine function calling it (and
    awaiting what it returns, if that is awaitable)."""
    if inspect.iscoroutinefunction(method):
        return method

    @functools.wraps(method)
    async def call(*args: Any) -> None:
        await _maybe_await(method(*args))

    return call


def _failed(hook: Callable[..., Any], task_uuid: str) -> None:
    hook = getattr(hook, "__wrapped__", hook)
    owner = type(getattr(hook, "__self__", hook)).__name__
    name = getattr(hook, "__name__", "hook")
    logger.exception("middleware %s.%s failed for %s (the task goes on)", owner, name, task_uuid)


# -- Go Machinery's handlers, as middlewares ---------------------------------------------

SignatureHandler = Callable[[Signature], Any]
ErrorHandler = Callable[[BaseException, Signature | None], Any]


class PrePublishHandler(Middleware):
    """Go's ``Server.SetPreTaskHandler``: ``handler(signature)`` before every publish."""

    def __init__(self, handler: SignatureHandler) -> None:
        self.handler = handler

    async def before_publish(self, signature: Signature) -> None:
        await _maybe_await(self.handler(signature))


class PreTaskHandler(Middleware):
    """Go's ``Worker.SetPreTaskHandler``: ``handler(signature)`` before the task runs."""

    def __init__(self, handler: SignatureHandler) -> None:
        self.handler = handler

    async def before_task(self, ctx: TaskContext) -> None:
        await _maybe_await(self.handler(ctx.signature))


class PostTaskHandler(Middleware):
    """Go's ``Worker.SetPostTaskHandler``: ``handler(signature)`` after the task ran."""

    def __init__(self, handler: SignatureHandler) -> None:
        self.handler = handler

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        await _maybe_await(self.handler(ctx.signature))


class ErrorHandlerMiddleware(Middleware):
    """Go's ``Worker.SetErrorHandler`` for task failures: ``handler(exception, signature)``
    on a task's final FAILURE (not on retries)."""

    def __init__(self, handler: ErrorHandler) -> None:
        self.handler = handler

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        if outcome.state is State.FAILURE:
            exc = outcome.exception or RuntimeError(outcome.error or "task failed")
            await _maybe_await(self.handler(exc, ctx.signature))


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
