"""The broker interface: publish signatures, hand deliveries to a worker, take acks.

A broker publishes (holding ETA tasks until they are due) and makes
:class:`Consumer` objects. A consumer is what a worker reads from. It is
shaped so that very different brokers fit it without special cases in the
worker:

* Redis claims a batch of messages into a per-worker processing list
  (``fetch``), removes them when done (``ack``) and returns them to the queue
  (``release``, or a reaper when the worker dies);
* AMQP buffers pushed deliveries and acks their delivery tags;
* SQS-like brokers receive batches and keep a receipt handle per message.

Where brokers differ, :class:`BrokerCapabilities` says so, and the engine
reads it instead of looking at URL schemes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

from ..signature import Signature

if TYPE_CHECKING:
    from ..config import Config
    from .ratelimit import RateLimiter

__all__ = [
    "Broker",
    "BrokerCapabilities",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "InlineOutcome",
    "InlineRunner",
]


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    """What a broker can do, where brokers differ."""

    in_process: bool = False
    """Queues live in this process only (``memory://``): no other process can consume them."""
    at_least_once: bool = True
    """Deliveries not acked when the consumer's process dies are delivered again."""
    priority: bool = False
    """``Signature.priority`` orders delivery."""
    list_pending: bool = True
    """Tasks waiting in a queue can be listed without taking them."""
    list_delayed: bool = True
    """Tasks waiting for their ETA can be listed."""
    list_held: bool = True
    """Tasks taken by workers and not finished (running, handed back for later) can be listed."""
    dead_letters: bool = True
    """Messages set aside (not a task, bad arguments) are kept with the reason and can be listed."""
    edit_dead_letters: bool = False
    """Dead letters can be put back on their queue or deleted, one by one or all."""
    consumes: bool = True
    """Workers fetch from its queues; False for ``eager://``, which runs each task as it is
    published."""


@dataclass(slots=True, eq=False)
class Delivery:
    """One message handed to a worker. ``token`` is the broker's own handle."""

    body: bytes
    queue: str
    token: Any = None
    redelivered: bool = False
    received_at: float = field(default_factory=time.monotonic)


class DeadLetter(BaseModel):
    """A message set aside because it cannot be run, with the reason."""

    queue: str
    reason: str
    body: str
    failed_at: str


@dataclass(slots=True)
class InlineOutcome:
    """What became of a task run by an :class:`InlineRunner`."""

    then: list[Signature] = field(default_factory=list)
    """What the run published (callbacks, chord callbacks, retries), in order, not yet run."""
    dead_letter: str = ""
    """Why the message was set aside (bad arguments); empty when it ran."""


class InlineRunner(Protocol):
    """Runs a task in the caller's coroutine as a worker would (what :meth:`Broker.attach` gets)."""

    async def run(self, signature: Signature) -> InlineOutcome:
        """Run ``signature`` to its end; raises TaskNotRegisteredError for an unknown name."""
        ...


class Consumer(ABC):
    """A worker's view of one queue.

    A consumer holds at most ``prefetch`` deliveries that are not yet settled
    (acked, requeued, dead-lettered or released); :meth:`fetch` hands out no
    more than that.
    """

    prefetch: int

    @abstractmethod
    async def fetch(self, max_count: int) -> list[Delivery]:
        """Up to ``max_count`` deliveries, waiting for the first as long as the broker sees fit
        (a blocking pop, a long poll, pushed messages).

        Returns an empty list when that wait ended with nothing, or the consumer is closing.
        Cancelling a fetch loses nothing.
        """

    @abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The delivery is done with (its final state is recorded); forget it.

        May return before the broker has the ack (AMQP's basic.ack has no reply; Redis
        sends acks in the background, together); until it does, a crash means the
        message is delivered again, never that it is lost. :meth:`flush` waits.
        """

    async def flush(self) -> None:
        """Wait until the broker has every ack given so far."""

    async def keep(self, delivery: Delivery) -> None:
        """The task failed and asked to keep its message (``StopTaskDeletionOnError``, an SQS
        field in Go): SQS leaves it for the queue's redrive policy; other brokers ack it, as
        Go's do."""
        await self.ack(delivery)

    @abstractmethod
    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Hand the message back, bytes unchanged, to be delivered again after ``delay`` s.

        Returns once the broker holds it (a delay does not keep the delivery in the
        consumer's prefetch); a crash during the delay loses nothing.
        """

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Set the message aside with ``reason``; it will not be delivered again."""

    @abstractmethod
    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return fetched-but-unstarted messages to the queue at once (shutdown)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop fetching and return whatever is still held to the queue."""


class Broker(ABC):
    """Publishes signatures to queues and creates consumers for workers."""

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities()

    def __init__(self, config: Config, url: str | None = None) -> None:
        self.config = config
        self.url = url or config.broker

    async def connect(self) -> None:
        """Open connections; called before first use. Must be idempotent."""

    async def close(self) -> None:
        """Close connections."""

    def attach(self, runner: InlineRunner) -> None:
        """Called by the Server that publishes through this broker with a runner of its
        tasks; a broker that runs tasks itself (``eager://``) keeps it, others ignore it."""

    def default_routing_key(self) -> str:
        """The queue a signature with an empty RoutingKey goes to."""
        return self.config.default_queue

    def adjust_routing_key(self, signature: Signature) -> None:
        """Fill in an empty RoutingKey, as Go's brokers do when publishing."""
        if not signature.routing_key:
            signature.routing_key = self.default_routing_key()

    @abstractmethod
    async def publish(self, signature: Signature) -> None:
        """Publish one signature; a future ETA is held by the broker until due."""

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish several signatures; brokers that can batch override this."""
        for signature in signatures:
            await self.publish(signature)

    @abstractmethod
    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        """A consumer of ``queue`` that holds at most ``prefetch`` unsettled deliveries."""

    # -- inspection and admin (the CLI and, later, dashboards) -------------------------

    @abstractmethod
    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Up to ``limit`` tasks waiting in ``queue`` (default queue if None), oldest first,
        without taking them."""

    @abstractmethod
    async def count_pending(self, queue: str | None = None) -> int:
        """How many messages wait in ``queue`` (default queue if None)."""

    async def get_held_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks taken from ``queue`` by workers and not finished: running, or handed back
        for later (names no worker knows), where the broker can list them."""
        return []

    async def get_delayed_tasks(self, limit: int | None = None) -> list[Signature]:
        """Tasks waiting for their ETA, earliest first (``capabilities.list_delayed``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list delayed tasks")

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Messages set aside from ``queue`` with their reasons (``capabilities.dead_letters``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list dead letters")

    async def count_dead_letters(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds (``capabilities.dead_letters``); brokers that
        can count without listing override this."""
        return len(await self.get_dead_letters(queue))

    async def requeue_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        """Put dead letters of ``queue`` (all, or those of ``letters`` still there) back at the
        tail of the queue, bytes as stored; returns how many (``capabilities.edit_dead_letters``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot requeue dead letters")

    async def delete_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        """Delete dead letters of ``queue`` (all, or those of ``letters`` still there); returns
        how many (``capabilities.edit_dead_letters``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete dead letters")

    @abstractmethod
    async def purge(self, queue: str | None = None) -> int:
        """Delete every pending task in ``queue``; return how many were removed."""

    def rate_limiter(self) -> RateLimiter | None:
        """A limiter shared by every worker on this broker, or None: each worker then limits
        on its own (``machinery_aio/ratelimit.py``). The same object on every call."""
        return None

    def describe(self) -> str:
        """A one-line description for logs, with any password masked."""
        from ..urls import mask_url

        return mask_url(self.url)
