"""The SQS broker: Go Machinery's message bodies on Amazon SQS queues named after routing keys."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from ...config import Config
from ...gotime import format_time
from ...signature import Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter
from .client import Clients, parse_url
from .consumer import BATCH, SQSConsumer
from .messages import MessageTooLargeError, message_entry
from .queues import MAX_MESSAGE_BYTES, MISSING_QUEUE, Queues, dead_letter_name, error_code

__all__ = ["MessageTooLargeError", "SQSBroker"]

PEEK_VISIBILITY = 30
"""Seconds dead letters stay hidden while they are being listed (then shown again at once)."""
PURGE_BY_RECEIVING = 1000
"""Purge up to this many messages by receiving and deleting them (an exact count); more with
PurgeQueue (SQS allows one per minute per queue and counts approximately)."""


class SQSBroker(Broker):
    """``https://sqs.<region>.amazonaws.com/<account>/``: one SQS queue per routing key.

    SQS cannot list what a queue holds, so pending tasks are counted (approximately, as SQS
    counts), not listed; delayed and running tasks are neither.
    """

    capabilities: ClassVar[BrokerCapabilities] = BrokerCapabilities(
        list_pending=False, list_delayed=False, list_held=False
    )

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        where = parse_url(self.url, "sqs")
        self.clients = Clients(where)
        self.queues = Queues(self.clients, where.account, config.sqs.create_queues)

    async def connect(self) -> None:
        await self.clients.get()

    async def close(self) -> None:
        await self.clients.close()

    # -- publishing ------------------------------------------------------------------------------

    async def publish(self, signature: Signature) -> None:
        self.adjust_routing_key(signature)
        entry = message_entry(signature, signature.routing_key)
        await self._to_queue(signature.routing_key, "send_message", **entry)

    async def _to_queue(self, queue: str, operation: str, **request: Any) -> Any:
        """One call on ``queue``; a queue that vanished (deleted, an emulator restarted) is
        looked up (and made, when allowed) again and the call tried once more."""
        client = await self.clients.get()
        try:
            return await getattr(client, operation)(QueueUrl=await self.queues.url(queue), **request)
        except ClientError as exc:
            if error_code(exc) not in MISSING_QUEUE:
                raise
        self.queues.forget(queue)
        return await getattr(client, operation)(QueueUrl=await self.queues.url(queue), **request)

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        """SendMessageBatch per queue, 10 messages or 256 KiB per call, in the order given."""
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for signature in signatures:
            self.adjust_routing_key(signature)
            by_queue.setdefault(signature.routing_key, []).append(
                message_entry(signature, signature.routing_key)
            )
        await asyncio.gather(*(self._send_batches(queue, entries) for queue, entries in by_queue.items()))

    async def _send_batches(self, queue: str, entries: list[dict[str, Any]]) -> None:
        for batch in _batches(entries):
            request = [{"Id": str(n), **entry} for n, entry in enumerate(batch)]
            response = await self._to_queue(queue, "send_message_batch", Entries=request)
            failed = response.get("Failed") or []
            if failed:
                reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed)
                raise ConnectionError(
                    f"SQS refused {len(failed)} of {len(batch)} messages to {queue!r}: {reasons}"
                )

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return SQSConsumer(self, queue, prefetch, tag)

    # -- inspection ------------------------------------------------------------------------------

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """SQS cannot list a queue without receiving from it: always empty (see ``count_pending``)."""
        return []

    async def count_pending(self, queue: str | None = None) -> int:
        """``ApproximateNumberOfMessages``: exact on an idle queue, approximate on a busy one."""
        url = await self.queues.existing_url(queue or self.default_routing_key())
        if url is None:
            return 0
        client = await self.clients.get()
        response = await client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(response["Attributes"]["ApproximateNumberOfMessages"])

    async def purge(self, queue: str | None = None) -> int:
        name = queue or self.default_routing_key()
        count = await self.count_pending(name)
        url = await self.queues.existing_url(name)
        if url is None or count == 0:
            return 0
        client = await self.clients.get()
        if count > PURGE_BY_RECEIVING:
            await client.purge_queue(QueueUrl=url)
            return count
        removed = 0
        while True:
            response = await client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=1
            )
            messages = response.get("Messages", [])
            if not messages:
                return removed
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)]
            await client.delete_message_batch(QueueUrl=url, Entries=entries)
            removed += len(messages)

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """The dead-letter queue's messages, oldest first as far as SQS orders them; listing
        receives them for a moment and shows them again at once."""
        name = queue or self.default_routing_key()
        url = await self.queues.existing_url(dead_letter_name(name))
        if url is None or limit == 0:
            return []
        client = await self.clients.get()
        letters: list[DeadLetter] = []
        receipts: list[str] = []
        try:
            while limit is None or len(letters) < limit:
                want = BATCH if limit is None else min(BATCH, limit - len(letters))
                response = await client.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=want,
                    WaitTimeSeconds=0,
                    VisibilityTimeout=PEEK_VISIBILITY,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["SentTimestamp"],
                )
                messages = response.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    receipts.append(message["ReceiptHandle"])
                    letters.append(_dead_letter(message, name))
        finally:
            for start in range(0, len(receipts), BATCH):
                chunk = receipts[start : start + BATCH]
                entries = [
                    {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": 0} for n, r in enumerate(chunk)
                ]
                await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        return letters


def _dead_letter(message: dict[str, Any], queue: str) -> DeadLetter:
    attributes = {k: v.get("StringValue", "") for k, v in message.get("MessageAttributes", {}).items()}
    sent = int(message.get("Attributes", {}).get("SentTimestamp", "0")) / 1000
    return DeadLetter(
        queue=attributes.get("queue", queue),
        reason=attributes.get("reason", "moved here by the queue's redrive policy"),
        body=message["Body"],
        failed_at=attributes.get("failed_at") or format_time(datetime.fromtimestamp(sent, UTC)),
    )


def _batches(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups of at most 10 entries and 256 KiB of bodies (SendMessageBatch's limits)."""
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        length = len(entry["MessageBody"].encode())
        if not batches or len(batches[-1]) == BATCH or size + length > MAX_MESSAGE_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += length
    return batches
