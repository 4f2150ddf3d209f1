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
from ...signature import InvalidMessageError, Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter, Delivery
from .store import shared, store_name

__all__ = ["MemoryBroker"]

WAIT = 1.0
"""Longest a fetch waits for a message before returning an empty list."""


class _Store:
    def __init__(self) -> None:
        self.queues: dict[str, deque[bytes]] = {}
        # (due unix s, seq, queue, body, handed back by a consumer rather than published with an ETA)
        self.delayed: list[tuple[float, int, str, bytes, bool]] = []
        self.dead: dict[str, list[DeadLetter]] = {}
        self.held: dict[str, dict[int, Delivery]] = {}  # queue -> deliveries consumers hold
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
            _, _, queue, body, _ = heapq.heappop(self.delayed)
            self.queue(queue).append(body)
        return self.delayed[0][0] - now if self.delayed else None

    def delay(self, due: float, queue: str, body: bytes, handed_back: bool = False) -> None:
        heapq.heappush(self.delayed, (due, next(self.seq), queue, body, handed_back))

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class MemoryBroker(Broker):
    """In-process broker; ``memory://name`` instances with the same name share queues."""

    capabilities = BrokerCapabilities(in_process=True, at_least_once=False, edit_dead_letters=True)

    @property
    def _store(self) -> _Store:
        return shared(_Store, store_name(self.url), _Store)

    async def publish(self, signature: Signature) -> None:
        self._put(signature)
        await self._store.notify()

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        for signature in signatures:
            self._put(signature)
        await self._store.notify()

    def _put(self, signature: Signature) -> None:
        self.adjust_routing_key(signature)
        store = self._store
        body = signature.to_json()
        eta = signature.eta
        if eta is not None and eta > datetime.now(UTC):
            store.delay(unix_nanos(eta) / 1e9, signature.routing_key, body)
        else:
            store.queue(signature.routing_key).append(body)

    async def push_raw(self, queue: str, body: bytes) -> None:
        """Put raw bytes on ``queue``, as a foreign (or Go) producer would."""
        self._store.queue(queue).append(body)
        await self._store.notify()

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return _MemoryConsumer(self._store, queue, prefetch)

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        items = list(self._store.queue(queue or self.config.default_queue))
        return _decode(items[:limit])

    async def count_pending(self, queue: str | None = None) -> int:
        return len(self._store.queue(queue or self.config.default_queue))

    async def get_held_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        store = self._store
        name = queue or self.config.default_queue
        bodies = [d.body for d in store.held.get(name, {}).values()]
        bodies += [body for _, _, q, body, back in sorted(store.delayed) if q == name and back]
        return _decode(bodies[:limit])

    async def get_delayed_tasks(self, limit: int | None = None) -> list[Signature]:
        return _decode([body for _, _, _, body, back in sorted(self._store.delayed) if not back][:limit])

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        return list(self._store.dead.get(queue or self.config.default_queue, ()))[:limit]

    async def count_dead_letters(self, queue: str | None = None) -> int:
        return len(self._store.dead.get(queue or self.config.default_queue, ()))

    async def requeue_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        name = queue or self.config.default_queue
        taken = self._take_dead(name, letters)
        self._store.queue(name).extend(letter.body.encode() for letter in taken)
        await self._store.notify()
        return len(taken)

    async def delete_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        return len(self._take_dead(queue or self.config.default_queue, letters))

    def _take_dead(self, queue: str, letters: Sequence[DeadLetter] | None) -> list[DeadLetter]:
        kept = self._store.dead.get(queue, [])
        if letters is None:
            self._store.dead[queue] = []
            return kept
        taken = []
        for letter in letters:
            if letter in kept:
                kept.remove(letter)
                taken.append(letter)
        return taken

    async def purge(self, queue: str | None = None) -> int:
        items = self._store.queue(queue or self.config.default_queue)
        count = len(items)
        items.clear()
        return count


def _decode(bodies: list[bytes]) -> list[Signature]:
    out = []
    for body in bodies:
        try:
            out.append(Signature.from_json(body))
        except InvalidMessageError:
            continue
    return out


class _MemoryConsumer(Consumer):
    def __init__(self, store: _Store, queue: str, prefetch: int) -> None:
        self.store = store
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.held = store.held.setdefault(queue, {})
        self.mine: set[int] = set()
        self.closed = False
        self.full = False  # a fetch waits for room: settling a delivery must wake it

    async def fetch(self, max_count: int) -> list[Delivery]:
        store = self.store
        deadline = time.monotonic() + WAIT
        async with store.changed:
            while not self.closed:
                next_due = store.move_due()
                items = store.queue(self.queue)
                room = min(max_count, self.prefetch - len(self.mine))
                self.full = room <= 0
                if items and room > 0:
                    out: list[Delivery] = []
                    while items and len(out) < room:
                        delivery = Delivery(items.popleft(), self.queue)
                        self.held[id(delivery)] = delivery
                        self.mine.add(id(delivery))
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

    def _settle(self, delivery: Delivery) -> bool:
        """Forget ``delivery``; False if it was not ours (already settled)."""
        if id(delivery) not in self.mine:
            return False
        self.mine.discard(id(delivery))
        self.held.pop(id(delivery), None)
        return True

    async def ack(self, delivery: Delivery) -> None:
        if self._settle(delivery) and self.full:
            await self.store.notify()  # room for the fetch that waits

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        if not self._settle(delivery):
            return
        self.store.delay(time.time() + delay, delivery.queue, delivery.body, handed_back=delay > 0)
        await self.store.notify()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not self._settle(delivery):
            return
        letter = DeadLetter(
            queue=delivery.queue,
            reason=reason,
            body=delivery.body.decode("utf-8", "replace"),
            failed_at=datetime.now(UTC).isoformat(),
        )
        self.store.dead.setdefault(delivery.queue, []).append(letter)
        await self.store.notify()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        items = self.store.queue(self.queue)
        for delivery in reversed(deliveries):
            if self._settle(delivery):
                items.appendleft(delivery.body)
        await self.store.notify()

    async def close(self) -> None:
        self.closed = True
        await self.release([self.held[key] for key in list(self.mine) if key in self.held])
