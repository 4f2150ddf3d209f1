"""A worker's consumer of one Pub/Sub subscription, asyncio-native (no thread per message).

* One pull at a time asks for as many messages as the worker has free slots
  (``prefetch`` minus what is buffered or running); a pull is a long poll, so
  an idle consumer does not spin.
* Every message it holds has its ack deadline extended, and acks are sent in
  batches after the task's final state is recorded (:mod:`.leases`); a killed
  worker's messages are delivered again when their deadline passes.
* ETAs: a message whose ETA is less than :data:`HOLD` s away is held here (its
  deadline extended, no slot taken) and handed out when its ETA comes, by a
  timer, to the millisecond. One further away is given back to Pub/Sub with an
  ack deadline that ends :data:`EARLY` s before its ETA (at most 600 s, Pub/Sub's
  limit), so it comes back to some worker just before it is due.
* Closing (SIGTERM) gives back at once what was not started (deadline 0);
  messages held for their ETA are given back with the deadline that brings
  them back just before their ETA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions
from google.pubsub_v1 import ReceivedMessage

from ... import gotime
from ...log import get_logger
from ..broker import Consumer, Delivery
from .leases import Leases

if TYPE_CHECKING:
    from .broker import GCPPubSubBroker

__all__ = ["PubSubConsumer", "eta_of"]

logger = get_logger("machinery_aio.gcp")

MAX_DEADLINE = 600
"""Pub/Sub's longest ack deadline (seconds)."""
HOLD = 300.0
"""Messages due within this many seconds are held by the consumer until their ETA."""
MAX_HELD = 10_000
"""At most this many messages held for their ETA per consumer; more go back to Pub/Sub."""
EARLY = 5.0
"""A message given back to Pub/Sub for a long ETA returns this many seconds before it."""
MAX_PULL = 1000
PULL_TIMEOUT = 2.0
"""Seconds a pull waits for messages (a long poll). A stopping consumer lets its last pull
end rather than cancel it: Pub/Sub may hand messages to a cancelled pull, and those would
come back only when their ack deadline ends."""
WAIT = 1.0
"""Longest a fetch waits for a message before returning an empty list."""
MAX_BACKOFF = 10.0


@dataclass(slots=True)
class _Held:
    delivery: Delivery
    due: float
    """Unix seconds."""
    timer: asyncio.TimerHandle


def eta_of(body: bytes) -> float | None:
    """The message's ETA as Unix seconds, or None (no ETA, or not a task: the worker decides)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        if key.lower() == "eta":
            if not isinstance(value, str):
                return None
            try:
                return gotime.parse_time(value).timestamp()
            except ValueError:
                return None
    return None


class PubSubConsumer(Consumer):
    """Pulls ``queue``'s subscription for a worker with ``prefetch`` slots."""

    def __init__(self, broker: GCPPubSubBroker, queue: str, *, prefetch: int, tag: str) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = max(prefetch, 1)
        self.tag = tag
        self.subscription = broker.names.subscription_of(queue)
        self.path = broker.names.subscription_path(self.subscription)
        self.leases = Leases(broker.clients, self.path, broker.settings.max_extension)
        self._buffer: deque[Delivery] = deque()
        self._out: dict[str, Delivery] = {}
        self._held: dict[str, _Held] = {}
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._starting = asyncio.Lock()
        self._started = False
        self._puller: asyncio.Task[None] | None = None
        self._pausing = False
        self._error: Exception | None = None
        self._closed = False

    # -- background: pull, lease, ack ---------------------------------------------------

    async def _start(self) -> None:
        async with self._starting:
            if self._started or self._closed:
                return
            self.leases.deadline = await self.broker.resources.queue(self.queue)
            self.leases.start(f"{self.tag}-pubsub")
            self._started = True

    def _pull(self) -> None:
        """Pull in the background (again, after a pause)."""
        self._pausing = False
        if not self._closed and (self._puller is None or self._puller.done()):
            self._puller = asyncio.get_running_loop().create_task(self._pull_loop(), name=f"{self.tag}-pull")

    @property
    def _unsettled(self) -> int:
        return len(self._buffer) + len(self._out)

    async def _pull_loop(self) -> None:
        subscriber = self.broker.clients.subscriber
        backoff = 0.0
        while not self._closed and not self._pausing:
            room = self.prefetch - self._unsettled
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                response = await subscriber.pull(
                    subscription=self.path, max_messages=min(room, MAX_PULL), timeout=PULL_TIMEOUT
                )
            except exceptions.DeadlineExceeded:
                continue
            except Exception as exc:
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.5)
                logger.warning("pulling %s failed: %s; again in %.1f s", self.path, exc, backoff)
                self._error = exc
                self._arrived.set()
                await asyncio.sleep(backoff)
                if isinstance(exc, exceptions.NotFound):
                    self.broker.resources.forget(self.subscription)
                    with contextlib.suppress(Exception):
                        self.leases.deadline = await self.broker.resources.queue(self.queue)
                continue
            backoff = 0.0
            self._error = None
            self._received(response.received_messages)

    def _received(self, messages: Sequence[ReceivedMessage]) -> None:
        now = time.time()
        since = time.monotonic()
        later: dict[int, list[str]] = {}
        for received in messages:
            ack_id = received.ack_id
            delivery = Delivery(
                received.message.data, self.queue, token=ack_id, redelivered=received.delivery_attempt > 1
            )
            due = eta_of(delivery.body)
            if due is None or due <= now:
                self.leases.lease(ack_id, since)
                self._buffer.append(delivery)
            elif due - now <= HOLD and len(self._held) < MAX_HELD:
                self._hold(delivery, due, now)
            else:
                # At least 1 s, so a message due soon on a full consumer does not spin.
                later.setdefault(max(1, _deadline_before(due, now)), []).append(ack_id)
        if self._buffer:
            self._arrived.set()
        for seconds, ack_ids in later.items():
            self._spawn(self.leases.modify(ack_ids, seconds))

    def _hold(self, delivery: Delivery, due: float, now: float) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + (due - now), self._due, delivery.token)
        self._held[delivery.token] = _Held(delivery, due, timer)
        self.leases.lease(delivery.token, None)

    def _due(self, ack_id: str) -> None:
        held = self._held.pop(ack_id, None)
        if held is None or self._closed:
            return
        if self._unsettled < self.prefetch:
            self.leases.lease(ack_id, time.monotonic())
            self._buffer.appendleft(held.delivery)
            self._arrived.set()
        else:  # every slot busy: let another worker take it now
            self.leases.drop(ack_id)
            self._spawn(self.leases.modify([ack_id], 0))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        task.add_done_callback(_log_failure)

    def _settle(self, delivery: Delivery) -> str | None:
        """Take ``delivery`` off this consumer's books; None if it was settled already."""
        ack_id: str = delivery.token
        if self._out.pop(ack_id, None) is None:
            return None
        self.leases.drop(ack_id)
        self._room.set()
        return ack_id

    # -- Consumer interface -------------------------------------------------------------

    async def fetch(self, max_count: int) -> list[Delivery]:
        if self._closed:
            return []
        await self._start()
        self._pull()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        try:
            return await self._take(max_count, deadline)
        except asyncio.CancelledError:
            # The worker stops fetching (a graceful stop): pull no more; the pull under way
            # ends by itself, and closing gives back what it brought.
            self._pausing = True
            self._room.set()
            raise

    async def _take(self, max_count: int, deadline: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self._buffer:
                out: list[Delivery] = []
                while self._buffer and len(out) < max_count:
                    delivery = self._buffer.popleft()
                    self._out[delivery.token] = delivery
                    out.append(delivery)
                return out
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            left = deadline - loop.time()
            if left <= 0:
                return []
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return []

    async def ack(self, delivery: Delivery) -> None:
        ack_id = self._settle(delivery)
        if ack_id is not None:
            await self.leases.ack(ack_id)

    async def flush(self) -> None:
        await self.leases.flush()

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Give the message back to Pub/Sub, delivered again after ``delay`` s (at most 600)."""
        ack_id = self._settle(delivery)
        if ack_id is None:
            return
        seconds = min(MAX_DEADLINE, math.ceil(delay)) if delay > 0 else 0
        if seconds:
            self.broker.handed_back(ack_id, self.queue, delivery.body, seconds)
        await self.leases.modify([ack_id], seconds)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if delivery.token not in self._out:
            return
        try:
            await self.broker.publish_dead_letter(self.subscription, self.queue, delivery.body, reason)
        except Exception:
            # Not set aside: delivered again after a pause rather than dropped or spun on.
            await self.requeue(delivery, 5.0)
            raise
        await self.ack(delivery)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        ack_ids = [ack_id for ack_id in map(self._settle, deliveries) if ack_id is not None]
        await self.leases.modify(ack_ids, 0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._room.set()
        if self._puller is not None:
            try:  # let the pull under way end: what it brings is given back below
                async with asyncio.timeout(PULL_TIMEOUT + 2):
                    await asyncio.shield(self._puller)
            except (TimeoutError, Exception):
                self._puller.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._puller
        await self.leases.stop_extending()
        now = time.time()
        back = [d.token for d in self._buffer] + list(self._out)
        self._buffer.clear()
        self._out.clear()
        later: dict[int, list[str]] = {}
        for ack_id, held in self._held.items():
            held.timer.cancel()
            later.setdefault(_deadline_before(held.due, now), []).append(ack_id)
        self._held.clear()
        try:
            await self.leases.modify(back, 0)
            for seconds, ack_ids in later.items():
                await self.leases.modify(ack_ids, seconds)
        except Exception as exc:
            logger.warning(
                "giving messages back to %s failed (%s): they return when their deadline ends", self.path, exc
            )
        await self.leases.stop()


def _deadline_before(due: float, now: float) -> int:
    """The ack deadline that brings a message back :data:`EARLY` s before ``due``."""
    return max(0, min(MAX_DEADLINE, int(due - now - EARLY)))


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a Pub/Sub deadline change failed: %s", task.exception())
