"""Publisher: records PENDING and publishes tasks and workflows, with the publish middlewares.

The :class:`~machinery_aio.server.Server` sends through one; the worker's runner
(callbacks, chord callbacks, retries) and the periodic scheduler use the same
one, so every publish passes the same middlewares.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import gotime
from .config import ConfigError
from .drivers import MissingExtraError
from .drivers.backend import ResultBackend
from .drivers.broker import Broker
from .errors import ConnectionFailedError
from .middleware import Middlewares
from .result import AsyncResult, ChainAsyncResult, ChordAsyncResult
from .signature import Signature, new_task_uuid
from .state import State, TaskState
from .urls import mask_secrets
from .workflow import Chain, Chord, Group

__all__ = ["Publisher"]


class Publisher:
    """Sends signatures to ``broker`` after writing their PENDING states to ``backend``."""

    def __init__(
        self, broker: Broker, backend: ResultBackend, middlewares: Middlewares | None = None
    ) -> None:
        self.broker = broker
        self.backend = backend
        self.middlewares = middlewares if middlewares is not None else Middlewares()
        self._connected = False
        self._connecting: asyncio.Lock | None = None

    async def connect(self) -> None:
        """Connect the broker and backend (sending connects on demand too)."""
        if self._connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connected:
                return
            await _reach("broker", self.broker.describe(), self.broker.connect)
            await _reach("result backend", self.backend.describe(), self.backend.connect)
            self._connected = True

    def disconnected(self) -> None:
        """The broker and backend were closed: connect again before the next send."""
        self._connected = False

    @staticmethod
    def prepare(signature: Signature) -> None:
        """Check ``signature`` and give it a UUID and Headers if it has none."""
        if not isinstance(signature, Signature):
            raise TypeError(f"expected a Signature, got {type(signature).__name__}")
        if not signature.name:
            raise ValueError("a Signature needs a task name")
        if not signature.uuid:
            signature.uuid = new_task_uuid()
        if signature.headers is None:
            signature.headers = {}

    async def send_task(self, signature: Signature) -> AsyncResult[Any]:
        """Record PENDING and publish; returns the AsyncResult (``signature.uuid`` is set)."""
        self.prepare(signature)
        if not self._connected:
            await self.connect()
        middlewares = self.middlewares
        hooked = middlewares.publishing
        if hooked:
            await middlewares.before_publish(signature)
        written = await self.backend.set_states_soon((TaskState.new(signature, State.PENDING),))
        try:
            await self.broker.publish(signature)
        except BaseException:
            _forget(written)  # the publish error is what the caller needs to see
            raise
        await written
        if hooked:
            await middlewares.after_publish(signature)
        return AsyncResult(signature, self.backend)

    async def send_tasks(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many tasks with batched state writes and publishes."""
        sigs = list(signatures)
        for sig in sigs:
            self.prepare(sig)
        await self.connect()
        await self._before(sigs)
        created = gotime.now()  # one creation time for the batch
        await self.backend.set_states([TaskState.new(s, State.PENDING, created_at=created) for s in sigs])
        await self.broker.publish_many(sigs)
        await self._after(sigs)
        return [AsyncResult(sig, self.backend) for sig in sigs]

    async def republish(self, signature: Signature) -> None:
        """Publish again with the same UUID (retries, early ETAs); no PENDING is written."""
        await self._before([signature])
        await self.broker.publish(signature)
        await self._after([signature])

    async def send_group(self, group: Group, send_concurrency: int = 0) -> list[AsyncResult[Any]]:
        """Write the GroupMeta and PENDING states, then publish every member.

        ``send_concurrency`` caps publishes in flight (0: all at once, batched).
        """
        if not isinstance(group, Group):
            raise TypeError(f"expected a Group, got {type(group).__name__}")
        if send_concurrency < 0:
            raise ValueError("send_concurrency must be 0 (unlimited) or more")
        for sig in group.tasks:
            self.prepare(sig)
        await self.connect()
        await self._before(group.tasks)
        await self.backend.init_group(group.group_uuid, group.task_uuids())
        await self.backend.set_states([TaskState.new(s, State.PENDING) for s in group.tasks])
        if send_concurrency == 0:
            await self.broker.publish_many(group.tasks)
        else:
            limit = asyncio.Semaphore(send_concurrency)

            async def publish(sig: Signature) -> None:
                async with limit:
                    await self.broker.publish(sig)

            await asyncio.gather(*(publish(sig) for sig in group.tasks))
        await self._after(group.tasks)
        return [AsyncResult(sig, self.backend) for sig in group.tasks]

    async def send_chord(self, chord: Chord, send_concurrency: int = 0) -> ChordAsyncResult:
        """Send the chord's group; the last member to finish sends the callback."""
        if not isinstance(chord, Chord):
            raise TypeError(f"expected a Chord, got {type(chord).__name__}")
        if chord.callback.headers is None:
            chord.callback.headers = {}  # Go's SendChord leaves the embedded callback's Headers {}
        results = await self.send_group(chord.group, send_concurrency)
        return ChordAsyncResult(results, AsyncResult(chord.callback, self.backend))

    async def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send the chain's first link; each link sends the next when it succeeds."""
        if not isinstance(chain, Chain):
            raise TypeError(f"expected a Chain, got {type(chain).__name__}")
        await self.send_task(chain.tasks[0])
        return ChainAsyncResult([AsyncResult(sig, self.backend) for sig in chain.tasks])

    async def _before(self, signatures: list[Signature]) -> None:
        if self.middlewares.publishing:
            for sig in signatures:
                await self.middlewares.before_publish(sig)

    async def _after(self, signatures: list[Signature]) -> None:
        if self.middlewares.publishing:
            for sig in signatures:
                await self.middlewares.after_publish(sig)


async def _reach(role: str, where: str, connect: Callable[[], Awaitable[None]]) -> None:
    """Run ``connect``; a failure to reach the server becomes a ConnectionFailedError that
    names it (password masked). Configuration errors pass through as they are."""
    try:
        await connect()
    except (ConfigError, MissingExtraError):
        raise
    except Exception as exc:
        reason = mask_secrets(str(exc)).replace(f"{where}: ", "") or type(exc).__name__
        raise ConnectionFailedError(f"cannot connect to the {role} {where}: {reason}") from exc


def _forget(written: Awaitable[Any]) -> None:
    """Let a state write still under way finish on its own, its error (if any) retrieved."""
    if isinstance(written, asyncio.Future):
        written.add_done_callback(lambda f: None if f.cancelled() else f.exception())
    elif inspect.iscoroutine(written):
        written.close()
