"""Running a task in the caller's coroutine, through the worker's TaskRunner (for ``eager://``).

The Server hands an :class:`InlineRunner` to its broker (``Broker.attach``). What a run
publishes (callbacks, chord callbacks, retries) is collected instead of sent, and
handed back for the broker to run next, so a chain runs as a loop, not nested.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

from .config import Config
from .drivers.backend import ResultBackend
from .drivers.broker import Broker, Consumer, InlineOutcome
from .errors import TaskNotRegisteredError
from .middleware import Middlewares
from .publisher import Publisher
from .runner import Action, TaskRunner
from .signature import Signature
from .tasks import TaskFunction

__all__ = ["InlineRunner"]

_collected: contextvars.ContextVar[list[Signature]] = contextvars.ContextVar("machinery_inline_then")


class _Collect(Broker):
    """The broker the inline runner publishes through: keeps a snapshot of each signature
    for the run under way."""

    async def publish(self, signature: Signature) -> None:
        self.adjust_routing_key(signature)
        _collected.get().append(Signature.from_json(signature.to_json()))

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        raise NotImplementedError("nothing consumes what an inline run publishes")

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        return []

    async def count_pending(self, queue: str | None = None) -> int:
        return 0

    async def purge(self, queue: str | None = None) -> int:
        return 0


class InlineRunner:
    """Runs tasks as a worker of ``registry`` would, states in ``backend``, with ``middlewares``."""

    def __init__(
        self,
        config: Config,
        registry: Mapping[str, TaskFunction],
        backend: ResultBackend,
        middlewares: Middlewares,
    ) -> None:
        publisher = Publisher(_Collect(config, "inline://"), backend, middlewares)
        self.runner = TaskRunner(
            registry, backend, publisher, middlewares, tag="inline", error_types=not config.go_compatible
        )

    async def run(self, signature: Signature) -> InlineOutcome:
        """Run ``signature`` to its end; raises TaskNotRegisteredError for an unknown name."""
        then: list[Signature] = []
        token = _collected.set(then)
        try:
            outcome = await self.runner.process(signature.to_json())
        finally:
            _collected.reset(token)
        if outcome.action is Action.UNREGISTERED:
            raise TaskNotRegisteredError(
                f"task {signature.name!r} is not registered, and no other worker will run it"
            )
        reason = outcome.reason if outcome.action is Action.DEAD_LETTER else ""
        return InlineOutcome(then, reason)
