"""The ``eager://`` broker: publishing a task runs it, inline, before the publish returns.

The Server attaches an :class:`~machinery_aio.drivers.broker.InlineRunner`, which runs
each task through the engine's TaskRunner, the same code a worker runs, so states,
retries, callbacks, chords, errors and middlewares are those of a worker. What a run
publishes in turn (callbacks, chord callbacks, retries) is run next by the same
publish, one after the other, so a chain does not nest; a task that sends another
task from its own body has that one run at once, so it may wait for its result.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ...config import ConfigError
from ...signature import Signature
from ...urls import mask_url
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter, InlineRunner

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["EagerBroker"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _wants_sleep(url: str) -> bool:
    """``eager://?sleep=true`` waits for ETAs and retry back-offs; nothing else is accepted."""
    query = urlsplit(url).query if "://" in url else ""
    sleep = False
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "sleep":
            raise ConfigError(f"unknown eager:// option {key!r} in {mask_url(url)!r}; known: sleep")
        if value.lower() not in (*_TRUE, *_FALSE):
            raise ConfigError(f"eager:// option sleep must be true or false, got {value!r}")
        sleep = value.lower() in _TRUE
    return sleep


class EagerBroker(Broker):
    """Runs each published task inline (Go's ``eager`` broker); for tests and scripts.

    ``eager://?sleep=true`` waits for a task's ETA and for retry back-offs; by default
    they are skipped and the task runs at once. Tasks of a group run one after the
    other. A task name that is not registered raises
    :class:`~machinery_aio.errors.TaskNotRegisteredError` from the publish, since no
    other worker will ever take it.
    """

    capabilities = BrokerCapabilities(
        in_process=True, at_least_once=False, list_delayed=False, consumes=False
    )

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.sleep = _wants_sleep(self.url)
        self._runner: InlineRunner | None = None
        self._dead: dict[str, list[DeadLetter]] = {}

    def attach(self, runner: InlineRunner) -> None:
        self._runner = runner

    async def publish(self, signature: Signature) -> None:
        runner = self._runner
        if runner is None:
            raise ConfigError(
                "the eager:// broker runs tasks inline, so it needs a Server's tasks: "
                "use Server(Config(broker='eager://', ...))"
            )
        self.adjust_routing_key(signature)
        todo = deque([Signature.from_json(signature.to_json())])  # a snapshot, as a broker keeps
        while todo:
            sig = todo.popleft()
            await self._until_due(sig)
            outcome = await runner.run(sig)
            todo.extend(outcome.then)
            if outcome.dead_letter:
                self._keep(sig, outcome.dead_letter)

    async def _until_due(self, sig: Signature) -> None:
        """Sleep until the ETA with ``sleep=true``; else drop it, so the task runs now."""
        if sig.eta is None:
            return
        wait = (sig.eta - datetime.now(UTC)).total_seconds()
        if self.sleep and wait > 0:
            await asyncio.sleep(wait)
        else:
            sig.eta = None  # the runner hands a future ETA back to the broker: run it now instead

    def _keep(self, sig: Signature, reason: str) -> None:
        letter = DeadLetter(
            queue=sig.routing_key,
            reason=reason,
            body=sig.to_json().decode(),
            failed_at=datetime.now(UTC).isoformat(),
        )
        self._dead.setdefault(sig.routing_key, []).append(letter)

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        raise ConfigError(
            "eager:// runs every task inside send_task: there is no queue for a worker to consume"
        )

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        return []  # nothing waits: every task ran when it was sent

    async def count_pending(self, queue: str | None = None) -> int:
        return 0

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        return list(self._dead.get(queue or self.config.default_queue, ()))[:limit]

    async def purge(self, queue: str | None = None) -> int:
        return 0
