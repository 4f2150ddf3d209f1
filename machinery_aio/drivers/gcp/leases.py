"""The ack deadlines and the acks of the messages one consumer holds on one subscription.

* Every message held (buffered, running, or waiting for its ETA) is *leased*:
  one request every third of the subscription's ack deadline extends them all,
  for at most ``gcp_pubsub.max_extension`` s per running task (Go's
  ``MaxExtension``; messages waiting for their ETA have no limit).
* Deadline changes (0 gives a message back) go in one request per call.
* Acks are queued and sent together by a background task, a few ms after the
  first of a batch; :meth:`Leases.flush` waits until they are sent.

One ack ID the server no longer knows (its deadline passed, the emulator
restarted) fails a whole request; the IDs are then sent one by one, and the
unknown ones are forgotten: Pub/Sub delivers those messages again anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from google.api_core import exceptions

from ...log import get_logger
from .peek import ack_in_chunks, modify_in_chunks
from .resources import Clients

__all__ = ["Leases"]

logger = get_logger("machinery_aio.gcp")

ACK_LINGER = 0.005
"""Seconds acks wait to be sent together."""
SEND_TIMEOUT = 30.0
"""Longest :meth:`Leases.stop` waits for acks still on their way."""


class Leases:
    """Leases, deadline changes and batched acks for ``path`` (a subscription)."""

    def __init__(self, clients: Clients, path: str, max_extension: float) -> None:
        self.clients = clients
        self.path = path
        self.max_extension = max_extension
        self.deadline = 10
        """The subscription's ack deadline (seconds), set when the consumer starts."""
        self.leased: dict[str, float | None] = {}
        """Ack ID -> when its task was received (monotonic; None: no extension limit)."""
        self._acks: list[str] = []
        self._ack_wanted = asyncio.Event()
        self._acks_idle = asyncio.Event()
        self._acks_idle.set()
        self._modifying = asyncio.Lock()
        self._extender: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        self._extender = loop.create_task(self._extend_loop(), name=f"{name}-extend")
        self._acker = loop.create_task(self._ack_loop(), name=f"{name}-ack")

    def lease(self, ack_id: str, since: float | None) -> None:
        self.leased[ack_id] = since

    def drop(self, ack_id: str) -> None:
        self.leased.pop(ack_id, None)

    # -- deadlines -----------------------------------------------------------------------

    async def _extend_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.deadline / 3))
            self._drop_expired()
            try:
                await self.modify(None, self.deadline)
            except Exception as exc:
                logger.warning("extending ack deadlines on %s failed: %s", self.path, exc)

    def _drop_expired(self) -> None:
        if not self.max_extension:
            return
        now = time.monotonic()
        expired = [
            a for a, since in self.leased.items() if since is not None and now - since > self.max_extension
        ]
        for ack_id in expired:
            del self.leased[ack_id]
        if expired:
            logger.warning(
                "%d tasks from %s ran longer than gcp_pubsub.max_extension (%g s): Pub/Sub may "
                "deliver them again",
                len(expired),
                self.path,
                self.max_extension,
            )

    async def modify(self, ack_ids: list[str] | None, seconds: int) -> None:
        """Set the ack deadline of ``ack_ids`` (None: of every leased message) to ``seconds``."""
        async with self._modifying:  # so a give-back (0) never lands before an extension
            ack_ids = list(self.leased) if ack_ids is None else ack_ids
            if not ack_ids:
                return
            subscriber = self.clients.subscriber
            try:
                await modify_in_chunks(subscriber, self.path, ack_ids, seconds)
            except exceptions.InvalidArgument:
                for ack_id in ack_ids:
                    try:
                        await modify_in_chunks(subscriber, self.path, [ack_id], seconds)
                    except exceptions.InvalidArgument:
                        self.leased.pop(ack_id, None)

    # -- acks ----------------------------------------------------------------------------

    async def ack(self, ack_id: str) -> None:
        """Queue an ack (sent at once when the background sender is not running)."""
        self.leased.pop(ack_id, None)
        self._acks.append(ack_id)
        self._acks_idle.clear()
        self._ack_wanted.set()
        if self._acker is None:
            await self.flush()

    async def flush(self) -> None:
        """Wait until every ack queued so far is sent."""
        if self._acker is None:
            ack_ids, self._acks = self._acks, []
            if ack_ids:
                await self.send_acks(ack_ids)
            self._acks_idle.set()
            return
        await self._acks_idle.wait()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wanted.wait()
            await asyncio.sleep(ACK_LINGER)
            self._ack_wanted.clear()
            ack_ids, self._acks = self._acks, []
            await self.send_acks(ack_ids)
            if not self._acks:
                self._acks_idle.set()

    async def send_acks(self, ack_ids: list[str]) -> None:
        """Ack ``ack_ids`` now, retrying transient errors a few times."""
        subscriber = self.clients.subscriber
        for attempt in range(5):
            try:
                await ack_in_chunks(subscriber, self.path, ack_ids)
                return
            except exceptions.InvalidArgument:
                for ack_id in ack_ids:
                    with contextlib.suppress(exceptions.GoogleAPICallError):
                        await ack_in_chunks(subscriber, self.path, [ack_id])
                return
            except Exception as exc:
                logger.warning("acking %d messages on %s failed (%s); retrying", len(ack_ids), self.path, exc)
                await asyncio.sleep(0.2 * 2**attempt)
        logger.error("could not ack %d messages on %s: they will be delivered again", len(ack_ids), self.path)

    async def stop_extending(self) -> None:
        """Extend no deadline any more (after an extension under way has been answered, so
        that it never lands after a give-back), and forget every lease."""
        async with self._modifying:
            extender, self._extender = self._extender, None
            if extender is not None:
                extender.cancel()
            self.leased.clear()
        if extender is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await extender

    async def stop(self) -> None:
        """Stop extending, send the acks still queued, stop the sender."""
        await self.stop_extending()
        acker, self._acker = self._acker, None
        if acker is not None:
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self._acks_idle.wait()
            except TimeoutError:
                logger.warning("acks to %s still unsent: those tasks will be delivered again", self.path)
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acker
        await self.flush()
