"""Looking at what waits on a subscription: Pub/Sub has no "list" or "count" call.

A peek pulls the waiting messages (``return_immediately``) and gives them back
at once with an ack deadline of 0, in the order they came, so they are
delivered again straight away; messages that workers hold are not seen. On
Google's service a pull may return fewer messages than are waiting, so counts
are a lower bound there (Cloud Monitoring's ``num_undelivered_messages`` is the
exact figure); the emulator returns them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.api_core import exceptions
from google.pubsub_v1 import ReceivedMessage
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

__all__ = ["PEEK_MAX", "ack_in_chunks", "modify_in_chunks", "peek"]

PEEK_BATCH = 1000
PEEK_MAX = 100_000
"""The most messages one peek looks at."""
CHUNK = 1000
"""Ack IDs per acknowledge or modify-deadline request (Pub/Sub caps a request at 512 kB)."""
TIMEOUT = 30.0


async def peek(
    subscriber: SubscriberAsyncClient, path: str, limit: int | None = None, *, take: bool = False
) -> list[ReceivedMessage]:
    """Up to ``limit`` messages waiting on ``path``, oldest first; acked (removed) if ``take``,
    else given back. A subscription that does not exist holds nothing."""
    limit = PEEK_MAX if limit is None else min(limit, PEEK_MAX)
    seen: dict[str, ReceivedMessage] = {}
    ack_ids: list[str] = []
    try:
        while len(seen) < limit:
            try:
                response = await subscriber.pull(
                    subscription=path,
                    max_messages=min(PEEK_BATCH, limit - len(seen)),
                    return_immediately=True,
                    timeout=TIMEOUT,
                )
            except exceptions.NotFound:
                break
            new = 0
            for received in response.received_messages:
                ack_ids.append(received.ack_id)
                if received.message.message_id not in seen:
                    seen[received.message.message_id] = received
                    new += 1
            if not new:
                break
    finally:
        if take:
            await ack_in_chunks(subscriber, path, ack_ids)
        else:
            await modify_in_chunks(subscriber, path, ack_ids, 0)
    return sorted(seen.values(), key=_age)


def _age(received: ReceivedMessage) -> tuple[float, int, str]:
    message = received.message
    number = message.message_id
    return message.publish_time.timestamp(), int(number) if number.isdigit() else 0, number


async def ack_in_chunks(subscriber: SubscriberAsyncClient, path: str, ack_ids: Sequence[str]) -> None:
    for start in range(0, len(ack_ids), CHUNK):
        await subscriber.acknowledge(
            subscription=path, ack_ids=list(ack_ids[start : start + CHUNK]), timeout=TIMEOUT
        )


async def modify_in_chunks(
    subscriber: SubscriberAsyncClient, path: str, ack_ids: Sequence[str], seconds: int
) -> None:
    for start in range(0, len(ack_ids), CHUNK):
        await subscriber.modify_ack_deadline(
            subscription=path,
            ack_ids=list(ack_ids[start : start + CHUNK]),
            ack_deadline_seconds=seconds,
            timeout=TIMEOUT,
        )
