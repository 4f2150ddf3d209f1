"""The Google Cloud Pub/Sub broker (``gcppubsub://<project>/<subscription>``), as Go lays it out.

* A task is published to the topic named after its RoutingKey (else the
  default queue); the message data is the Signature JSON, with no attributes,
  as Go Machinery publishes it (an ordering key from ``BrokerMessageGroupId``
  when ``gcp_pubsub.ordering`` is on).
* Workers read the subscription named in the URL (other queues: a subscription
  named after the queue); topics and subscriptions are created when missing.
* Pub/Sub has no delayed delivery: the message goes out at once and the
  consumer holds it until its ETA (:mod:`.consumer`). Go's ``DelayThreshold``
  only batches on the client, so Go cannot delay either (Go issue #404).

docs/gcp.md describes the layout and the guarantees.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from google.api_core import exceptions
from google.pubsub_v1 import PubsubMessage

from ... import gotime
from ...log import get_logger
from ...signature import InvalidMessageError, Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter
from .names import PubSubNames, check_name
from .peek import peek
from .resources import RETENTION_SECONDS, Clients, Resources

if TYPE_CHECKING:
    from ...config import Config

__all__ = ["GCPPubSubBroker"]

logger = get_logger("machinery_aio.gcp")

MAX_BATCH_MESSAGES = 1000
MAX_BATCH_BYTES = 9_000_000
"""Pub/Sub takes at most 1,000 messages and 10 MB per publish request."""
PUBLISH_TIMEOUT = 60.0
REASON, QUEUE, FAILED_AT = "machinery_reason", "machinery_queue", "machinery_failed_at"
"""Attributes of a dead letter set aside by a worker."""
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
"""Attribute Pub/Sub adds when its dead-letter policy moves a message."""


@dataclass(slots=True)
class _HandBack:
    queue: str
    body: bytes
    until: float


class GCPPubSubBroker(Broker):
    """Publishes to Pub/Sub topics and reads subscriptions, compatible with Go Machinery."""

    capabilities = BrokerCapabilities(list_delayed=False)

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.names = PubSubNames.from_url(self.url, config.default_queue)
        self.settings = config.gcp_pubsub
        self.clients = Clients()
        self.resources = Resources(self.clients, self.names, self.settings)
        self._handed_back: dict[str, _HandBack] = {}

    async def connect(self) -> None:
        self.clients.publisher  # noqa: B018 - made now, in the running loop
        self.clients.subscriber  # noqa: B018

    async def close(self) -> None:
        await self.clients.close()

    # -- publishing ------------------------------------------------------------------

    def message(self, signature: Signature) -> PubsubMessage:
        """The Pub/Sub message for ``signature`` (RoutingKey filled in)."""
        self.adjust_routing_key(signature)
        check_name(signature.routing_key, "the routing key (the Pub/Sub topic)")
        if signature.eta is not None:
            ahead = signature.eta - gotime.now()
            if ahead > timedelta(seconds=RETENTION_SECONDS - 3600):
                raise ValueError(
                    f"task {signature.uuid}: an ETA {ahead} ahead is beyond what Pub/Sub keeps "
                    "(a subscription holds an unacknowledged message for at most 7 days)"
                )
        key = signature.broker_message_group_id if self.settings.ordering else ""
        return PubsubMessage(data=signature.to_json(), ordering_key=key)

    async def publish(self, signature: Signature) -> None:
        await self.publish_many([signature])

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish in order, one request per topic and 1,000 messages."""
        topics: dict[str, list[PubsubMessage]] = {}
        for signature in signatures:
            message = self.message(signature)
            topics.setdefault(signature.routing_key, []).append(message)
        for topic, messages in topics.items():
            await self.resources.queue(topic)
            for batch in _batches(messages):
                await self._send(topic, batch)

    async def _send(self, topic: str, messages: list[PubsubMessage]) -> None:
        path = self.names.topic_path(topic)
        try:
            await self.clients.publisher.publish(topic=path, messages=messages, timeout=PUBLISH_TIMEOUT)
        except exceptions.NotFound:
            # Deleted since this process checked it (or the emulator restarted): create again.
            self.resources.forget(self.names.subscription_of(topic))
            await self.resources.queue(topic)
            await self.clients.publisher.publish(topic=path, messages=messages, timeout=PUBLISH_TIMEOUT)

    async def publish_dead_letter(self, subscription: str, queue: str, body: bytes, reason: str) -> None:
        """Keep ``body`` on ``subscription``'s dead-letter topic with the reason in its attributes."""
        dead = await self.resources.dead_letters(subscription)
        attributes = {REASON: reason, QUEUE: queue, FAILED_AT: gotime.format_time(gotime.now())}
        await self.clients.publisher.publish(
            topic=self.names.topic_path(dead),
            messages=[PubsubMessage(data=body, attributes=attributes)],
            timeout=PUBLISH_TIMEOUT,
        )

    # -- consuming ---------------------------------------------------------------------

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        from .consumer import PubSubConsumer

        return PubSubConsumer(self, queue, prefetch=prefetch, tag=tag)

    def handed_back(self, key: str, queue: str, body: bytes, delay: float) -> None:
        """A consumer of this process handed a message back for ``delay`` s (for listing)."""
        now = time.monotonic()
        for old in [k for k, h in self._handed_back.items() if h.until <= now]:
            del self._handed_back[old]
        self._handed_back[key] = _HandBack(queue, body, now + delay)

    # -- inspection ----------------------------------------------------------------------

    async def _path(self, queue: str | None, *, peeking: bool = True) -> str:
        """The path of ``queue``'s subscription, warning when peeking it counts toward a
        dead-letter policy (every pull is a delivery attempt)."""
        path = self.names.subscription_path(self.names.subscription_of(queue or self.config.default_queue))
        if not peeking:
            return path
        try:
            found = await self.clients.subscriber.get_subscription(subscription=path)
        except exceptions.NotFound:
            return path
        attempts = found.dead_letter_policy.max_delivery_attempts
        if attempts:
            logger.warning(
                "%s has a dead-letter policy (%d attempts): looking at its messages counts as one "
                "delivery attempt of each",
                path,
                attempts,
            )
        return path

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks waiting on ``queue``'s subscription, peeked (see :mod:`.peek`); messages that
        are not tasks are skipped and logged."""
        if limit == 0:
            return []
        tasks: list[Signature] = []
        for received in await peek(self.clients.subscriber, await self._path(queue), limit):
            try:
                tasks.append(Signature.from_json(received.message.data))
            except InvalidMessageError as exc:
                logger.warning("queue %r holds a message that is not a task: %s", queue, exc.reason)
        return tasks

    async def count_pending(self, queue: str | None = None) -> int:
        return len(await peek(self.clients.subscriber, await self._path(queue)))

    async def get_held_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks this process's workers handed back for later (names no worker here knows),
        while Pub/Sub holds them; Pub/Sub cannot list what other processes hold."""
        queue = queue or self.config.default_queue
        now = time.monotonic()
        held = [h for h in self._handed_back.values() if h.queue == queue and h.until > now]
        tasks: list[Signature] = []
        for hand_back in sorted(held, key=lambda h: h.until)[:limit]:
            try:
                tasks.append(Signature.from_json(hand_back.body))
            except InvalidMessageError:
                continue
        return tasks

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        queue = queue or self.config.default_queue
        if limit == 0:
            return []
        dead = self.names.dead_letters_of(self.names.subscription_of(queue))
        letters: list[DeadLetter] = []
        for received in await peek(self.clients.subscriber, self.names.subscription_path(dead), limit):
            message = received.message
            attributes = message.attributes
            reason = attributes.get(REASON) or (
                f"delivered {attributes.get(DELIVERY_COUNT, 'too many')} times without an ack "
                "(the subscription's dead-letter policy)"
            )
            letters.append(
                DeadLetter(
                    queue=attributes.get(QUEUE, queue),
                    reason=reason,
                    body=message.data.decode("utf-8", "replace"),
                    failed_at=attributes.get(FAILED_AT) or gotime.format_time(message.publish_time),
                )
            )
        return letters

    async def purge(self, queue: str | None = None) -> int:
        """Remove (ack) every message waiting on ``queue``'s subscription; held ones stay."""
        return len(await peek(self.clients.subscriber, await self._path(queue, peeking=False), take=True))


def _batches(messages: list[PubsubMessage]) -> list[list[PubsubMessage]]:
    batches: list[list[PubsubMessage]] = [[]]
    size = 0
    for message in messages:
        length = len(message.data) + len(message.ordering_key) + 64
        if len(batches[-1]) >= MAX_BATCH_MESSAGES or (batches[-1] and size + length > MAX_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(message)
        size += length
    return batches
