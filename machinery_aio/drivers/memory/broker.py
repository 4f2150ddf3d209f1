"""The embedded ``memory://`` broker: in-process queues with acks, redelivery and ETAs.

Messages are kept as the same JSON bytes a network broker would carry. A
delivery stays owned by its consumer until acked; whatever a consumer still
holds when it closes (or is released) goes back to the head of its queue.
Tasks with a future ETA wait in a heap and are moved when due. Nothing
survives the process.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from ...gotime import unix_nanos
from ...signature import Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter, Delivery
from .store import shared, store_name

__all__ = ["MemoryBroker"]


class _Store:
    def __init__(self) -> None:
        self.queues: dict[str, deque[bytes]] = {}
        self.delayed: list[tuple[float, int, str, bytes]] = []  # (due unix s, seq, queue, body)
        self.dead: dict[str, list[DeadLetter]] = {}
        self.changed = asyncio.Condition()
        self.seq = itertools.count()

    def queue(self, name: str) -> deque[bytes]:
        found = self.queues.get(name)
        if found is None:
            found = self.queues[name] = deque()
        return found

    def move_due(self) -> float | None:
        """Move due delayed messages to their queues; return seconds until the next one."""
        now = time.time()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, queue, body = heapq.heappop(self.delayed)
            self.queue(queue).append(body)
        return self.delayed[0][0] - now if self.delayed else None

    def delay(self, due: float, queue: str, body: bytes) -> None:
        heapq.heappush(self.delayed, (due, next(self.seq), queue, body))


class MemoryBroker(Broker):
    """In-process broker; ``memory://name`` instances with the same name share queues."""

    scheme = "memory"
    capabilities = BrokerCapabilities(
        at_least_once=True, delayed_delivery=True, priority=False, persistent=False
    )

    @property
    def _store(self) -> _Store:
        return shared(_Store, store_name(self.url), _Store)

    async def publish(self, signature: Signature) -> None:
        self.adjust_routing_key(signature)
        await self._put(signature)

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        for signature in signatures:
            self.adjust_routing_key(signature)
            await self._put(signature, notify=False)
        async with self._store.changed:
            self._store.changed.notify_all()

    async def _put(self, signature: Signature, notify: bool = True) -> None:
        store = self._store
        body = signature.to_json()
        eta = signature.eta
        if eta is not None and eta > datetime.now(UTC):
            store.delay(unix_nanos(eta) / 1e9, signature.routing_key, body)
        else:
            store.queue(signature.routing_key).append(body)
        if notify:
            async with store.changed:
                store.changed.notify_all()

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return _MemoryConsumer(self._store, queue)

    async def get_pending_tasks(self, queue: str | None = None) -> list[Signature]:
        items = list(self._store.queue(queue or self.config.default_queue))
        return [Signature.from_json(body) for body in items]

    async def get_delayed_tasks(self) -> list[Signature]:
        return [Signature.from_json(body) for _, _, _, body in sorted(self._store.delayed)]

    async def get_dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        return list(self._store.dead.get(queue or self.config.default_queue, ()))

    async def purge(self, queue: str | None = None) -> int:
        items = self._store.queue(queue or self.config.default_queue)
        count = len(items)
        items.clear()
        return count


class _MemoryConsumer(Consumer):
    def __init__(self, store: _Store, queue: str) -> None:
        self.store = store
        self.queue = queue
        self.held: dict[int, Delivery] = {}
        self.closed = False
        self.timers: set[asyncio.TimerHandle] = set()

    async def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        store = self.store
        deadline = time.monotonic() + timeout
        async with store.changed:
            while not self.closed:
                next_due = store.move_due()
                items = store.queue(self.queue)
                if items:
                    out: list[Delivery] = []
                    while items and len(out) < max_count:
                        delivery = Delivery(items.popleft(), self.queue)
                        self.held[id(delivery)] = delivery
                        out.append(delivery)
                    return out
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return []
                if next_due is not None:
                    wait = min(wait, next_due)
                try:
                    await asyncio.wait_for(store.changed.wait(), wait)
                except TimeoutError:
                    pass
        return []

    async def ack(self, delivery: Delivery) -> None:
        self.held.pop(id(delivery), None)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        if self.held.pop(id(delivery), None) is None:
            return
        self.store.delay(time.time() + delay, delivery.queue, delivery.body)
        await self._notify()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.held.pop(id(delivery), None)
        letter = DeadLetter(
            queue=delivery.queue,
            reason=reason,
            body=delivery.body.decode("utf-8", "replace"),
            failed_at=datetime.now(UTC).isoformat(),
        )
        self.store.dead.setdefault(delivery.queue, []).append(letter)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        items = self.store.queue(self.queue)
        for delivery in reversed(deliveries):
            if self.held.pop(id(delivery), None) is not None:
                items.appendleft(delivery.body)
        await self._notify()

    async def close(self) -> None:
        self.closed = True
        await self.release(list(self.held.values()))

    async def _notify(self) -> None:
        async with self.store.changed:
            self.store.changed.notify_all()
