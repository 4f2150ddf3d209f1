"""The Pub/Sub clients, and topics and subscriptions created when missing.

Go Machinery needs the topic and subscription to exist. Here, the first use of
a queue in a process checks its subscription; when it is missing, the topic and
the subscription are created (with the settings of ``Config.gcp_pubsub``).
Resources that exist are used as they are. A publisher creates the queue's
subscription too, because Pub/Sub drops what is published to a topic that has
no subscription.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from google.api_core import exceptions
from google.pubsub_v1 import DeadLetterPolicy, Subscription
from google.pubsub_v1.services.publisher import PublisherAsyncClient
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

from ...config import GCPPubSubConfig
from ...log import get_logger
from .names import DEAD_SUFFIX, PubSubNames

__all__ = ["Clients", "Resources"]

logger = get_logger("machinery_aio.gcp")

RETENTION_SECONDS = 7 * 24 * 3600
"""The longest Pub/Sub keeps an unacknowledged message on a subscription (7 days)."""


class Clients:
    """Google's asyncio GAPIC clients (gRPC over grpc.aio), made on first use in the loop.

    They follow ``PUBSUB_EMULATOR_HOST`` and the default Google credentials.
    """

    def __init__(self) -> None:
        self._publisher: PublisherAsyncClient | None = None
        self._subscriber: SubscriberAsyncClient | None = None

    @property
    def publisher(self) -> PublisherAsyncClient:
        if self._publisher is None:
            self._publisher = PublisherAsyncClient()
        return self._publisher

    @property
    def subscriber(self) -> SubscriberAsyncClient:
        if self._subscriber is None:
            self._subscriber = SubscriberAsyncClient()
        return self._subscriber

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        subscriber, self._subscriber = self._subscriber, None
        for client in (publisher, subscriber):
            if client is not None:
                await client.transport.close()  # type: ignore[no-untyped-call]


class Resources:
    """Makes sure topics and subscriptions exist, once per process and name."""

    def __init__(self, clients: Clients, names: PubSubNames, settings: GCPPubSubConfig) -> None:
        self.clients = clients
        self.names = names
        self.settings = settings
        self._deadlines: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, subscription: str | None = None) -> None:
        """Check again on next use (the server said a resource is gone)."""
        if subscription is None:
            self._deadlines.clear()
        else:
            self._deadlines.pop(subscription, None)

    async def queue(self, queue: str) -> int:
        """Make sure ``queue``'s topic and subscription exist; the subscription's ack deadline."""
        return await self.subscription(self.names.subscription_of(queue), queue)

    async def dead_letters(self, subscription: str) -> str:
        """Make sure ``subscription``'s dead-letter topic and subscription exist; the topic."""
        dead = self.names.dead_letters_of(subscription)
        await self.subscription(dead, dead)
        return dead

    async def subscription(self, subscription: str, topic: str) -> int:
        """Make sure ``subscription`` exists, created on ``topic`` when missing; its ack deadline."""
        known = self._deadlines.get(subscription)
        if known is not None:
            return known
        lock = self._locks.setdefault(subscription, asyncio.Lock())
        async with lock:
            known = self._deadlines.get(subscription)
            if known is not None:
                return known
            path = self.names.subscription_path(subscription)
            try:
                found = await self.clients.subscriber.get_subscription(subscription=path)
            except exceptions.NotFound:
                found = await self._create(subscription, topic)
            self._deadlines[subscription] = found.ack_deadline_seconds or 10
            return self._deadlines[subscription]

    async def _create(self, subscription: str, topic: str) -> Subscription:
        topic_path = self.names.topic_path(topic)
        try:
            await self.clients.publisher.create_topic(name=topic_path)
            logger.info("created Pub/Sub topic %s", topic_path)
        except exceptions.AlreadyExists:
            pass
        request = Subscription(
            name=self.names.subscription_path(subscription),
            topic=topic_path,
            ack_deadline_seconds=self.settings.ack_deadline,
            enable_message_ordering=self.settings.ordering,
            message_retention_duration=timedelta(seconds=RETENTION_SECONDS),
        )
        attempts = self.settings.dead_letter_max_attempts
        if attempts and not subscription.endswith(DEAD_SUFFIX):
            dead = await self.dead_letters(subscription)
            request.dead_letter_policy = DeadLetterPolicy(
                dead_letter_topic=self.names.topic_path(dead), max_delivery_attempts=attempts
            )
        try:
            created = await self.clients.subscriber.create_subscription(request=request)
            logger.info("created Pub/Sub subscription %s on %s", request.name, topic_path)
            return created
        except exceptions.AlreadyExists:
            return await self.clients.subscriber.get_subscription(subscription=request.name)
