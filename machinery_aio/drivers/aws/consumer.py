"""The SQS consumer: long-poll receives up to the free room, batched deletes, a visibility
heartbeat for what it holds, and visibility 0 for what it gives back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ...gotime import format_time, now
from ...log import get_logger
from ..broker import Consumer, Delivery
from .messages import seconds_until_eta
from .queues import MAX_VISIBILITY, dead_letter_name, is_fifo

if TYPE_CHECKING:
    from .broker import SQSBroker

__all__ = ["SQSConsumer"]

logger = get_logger("machinery_aio.drivers.aws")

BATCH = 10
"""SQS's most messages per receive, delete or visibility change."""
MAX_RECEIVES = 5
"""Receives in flight at once when the room allows more than one batch."""
DELETE_LINGER = 0.05
"""Seconds an ack waits for others to share its DeleteMessageBatch call."""
NEAR_ETA = 1.0
"""A message due within this many seconds is held here until its ETA rather than hidden again
(a delay rounded up to whole seconds arrives a moment early by the sender's clock)."""
REASON_BYTES = 4096
"""The dead-letter reason is cut to this length."""


_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters SQS refuses in message attributes."""


def _chunks(items: Sequence[Any], size: int = BATCH) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SQSConsumer(Consumer):
    """Receives from one queue; each delivery's token is its receipt handle."""

    def __init__(self, broker: SQSBroker, queue: str, prefetch: int, tag: str) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.tag = tag
        self._held: dict[Delivery, str] = {}
        self._deletes: list[str] = []
        self._deleting: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._orphans: set[asyncio.Future[Any]] = set()
        """Receives whose fetch was cancelled, and the releases of what they got."""
        self._closed = False

    @property
    def settings(self) -> Any:
        return self.broker.config.sqs

    # -- receiving -------------------------------------------------------------------------------

    async def fetch(self, max_count: int) -> list[Delivery]:
        room = min(max_count, self.prefetch - len(self._held))
        if self._closed or room <= 0:
            return []
        # A receive cut short would leave SQS holding its messages until the visibility
        # timeout: a cancelled fetch lets it finish and gives back what it got.
        receiving = asyncio.ensure_future(self._fetch(room))
        try:
            return await asyncio.shield(receiving)
        except asyncio.CancelledError:
            self._orphans.add(receiving)
            receiving.add_done_callback(self._give_back)
            raise

    def _give_back(self, receiving: asyncio.Future[list[Delivery]]) -> None:
        self._orphans.discard(receiving)
        if receiving.cancelled() or receiving.exception() is not None or not receiving.result():
            return
        releasing = asyncio.ensure_future(self.release(receiving.result()))
        self._orphans.add(releasing)
        releasing.add_done_callback(self._orphans.discard)

    async def _fetch(self, room: int) -> list[Delivery]:
        url = await self.broker.queues.url(self.queue)
        first = await self._receive(url, min(room, BATCH), self.settings.wait_time_seconds)
        got = list(first)
        room -= len(first)
        if len(first) == BATCH and room > 0:
            sizes = [min(BATCH, room - i) for i in range(0, room, BATCH)][:MAX_RECEIVES]
            more = await asyncio.gather(*(self._receive(url, n, 0) for n in sizes), return_exceptions=True)
            for batch in more:  # what the others received is handed out even if one failed
                if isinstance(batch, BaseException):
                    logger.warning("receiving from SQS queue %r failed: %s", self.queue, batch)
                else:
                    got += batch
        if self._closed:
            await self.release(got)
            return []
        return got

    async def _receive(self, url: str, count: int, wait: int) -> list[Delivery]:
        client = await self.broker.clients.get()
        try:
            response = await client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=self.settings.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except ClientError as exc:
            self.broker.queues.forget(self.queue)  # deleted, or the emulator restarted: look again
            raise ConnectionError(f"receiving from SQS queue {self.queue!r} failed: {exc}") from exc
        deliveries: list[Delivery] = []
        early: list[tuple[str, float]] = []
        almost = 0.0
        for message in response.get("Messages", ()):
            body = message["Body"].encode()
            receipt = message["ReceiptHandle"]
            wait_more = seconds_until_eta(body)
            if wait_more > NEAR_ETA:
                early.append((receipt, wait_more))
                continue
            almost = max(almost, wait_more)
            count_seen = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            delivery = Delivery(body=body, queue=self.queue, token=receipt, redelivered=count_seen > 1)
            self._held[delivery] = receipt
            deliveries.append(delivery)
        if early:
            await self._hide(url, early)
        if almost:  # due within a second (visibility counts whole seconds): wait here
            await asyncio.sleep(almost)
        if deliveries:
            self._start_heartbeat()
        return deliveries

    async def _hide(self, url: str, early: list[tuple[str, float]]) -> None:
        """Messages that arrived before their ETA (a delay over 15 minutes, a FIFO queue)
        stay hidden until it, hop by hop (12 hours at most per hop)."""
        client = await self.broker.clients.get()
        for batch in _chunks(early):
            entries = [
                {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": min(MAX_VISIBILITY, math.ceil(s))}
                for n, (r, s) in enumerate(batch)
            ]
            try:
                await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
            except Exception as exc:  # they come back after the visibility timeout and are hidden then
                logger.warning("hiding %d SQS messages until their ETA failed: %s", len(entries), exc)

    # -- the heartbeat ----------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self.settings.visibility_heartbeat and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = asyncio.create_task(self._beat(), name=f"{self.tag}-sqs-heartbeat")

    async def _beat(self) -> None:
        """Every visibility_timeout / 2 s, extend the visibility of every held message."""
        while self._held and not self._closed:
            timeout = self.settings.visibility_timeout
            await asyncio.sleep(timeout / 2)
            receipts = list(self._held.values())
            if not receipts:
                return
            try:
                await self._change_visibility(receipts, timeout)
            except Exception as exc:
                logger.warning("extending the visibility of %d SQS messages failed: %s", len(receipts), exc)

    async def _change_visibility(self, receipts: Sequence[str], seconds: int) -> None:
        url = await self.broker.queues.url(self.queue)
        client = await self.broker.clients.get()
        for batch in _chunks(receipts):
            entries = [
                {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": seconds} for n, r in enumerate(batch)
            ]
            response = await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
            for failed in response.get("Failed", ()):
                logger.warning("changing an SQS message's visibility failed: %s", failed.get("Message"))

    # -- settling ---------------------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        receipt = self._held.pop(delivery, None)
        if receipt is None:
            return
        self._deletes.append(receipt)
        if self._deleting is None or self._deleting.done():
            self._deleting = asyncio.create_task(self._delete_all(), name=f"{self.tag}-sqs-delete")

    async def _delete_all(self) -> None:
        """Delete acked messages, up to 10 per call, several calls at once when many wait."""
        if len(self._deletes) < BATCH:
            await asyncio.sleep(DELETE_LINGER)  # let more acks join the call
        try:
            url = await self.broker.queues.url(self.queue)
            client = await self.broker.clients.get()
        except Exception as exc:
            logger.error(
                "deleting %d SQS messages failed: %s; they will be delivered again", len(self._deletes), exc
            )
            self._deletes.clear()
            return
        while self._deletes:
            batches = _chunks(self._deletes[: BATCH * MAX_RECEIVES])
            del self._deletes[: BATCH * MAX_RECEIVES]
            await asyncio.gather(*(self._delete_batch(client, url, b) for b in batches))

    async def _delete_batch(self, client: Any, url: str, receipts: Sequence[str]) -> None:
        entries = [{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(receipts)]
        try:
            response = await client.delete_message_batch(QueueUrl=url, Entries=entries)
        except Exception as exc:
            logger.error(
                "deleting %d SQS messages failed: %s; they will be delivered again", len(entries), exc
            )
            return
        for failed in response.get("Failed", ()):
            logger.error(
                "deleting an SQS message failed: %s; it will be delivered again", failed.get("Message")
            )

    async def flush(self) -> None:
        while self._deleting is not None and not self._deleting.done():
            await asyncio.shield(self._deleting)

    async def keep(self, delivery: Delivery) -> None:
        """Neither delete nor extend it: the message comes back after its visibility timeout,
        and a redrive policy moves it to a dead-letter queue after ``maxReceiveCount`` (Go's
        ``StopTaskDeletionOnError``)."""
        self._held.pop(delivery, None)

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        receipt = self._held.pop(delivery, None)
        if receipt is not None:
            await self._change_visibility([receipt], min(MAX_VISIBILITY, math.ceil(max(0.0, delay))))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        receipt = self._held.get(delivery)
        if receipt is None:
            return
        name = dead_letter_name(self.queue)
        dead_url = await self.broker.queues.url(name)
        client = await self.broker.clients.get()
        attributes = {
            "reason": _NOT_XML.sub("?", reason[:REASON_BYTES]) or "(no reason)",
            "queue": self.queue,
            "failed_at": format_time(now()),
        }
        entry: dict[str, Any] = {
            "MessageBody": delivery.body.decode(),
            "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
        }
        if is_fifo(name):
            entry["MessageGroupId"] = "dead"
            entry["MessageDeduplicationId"] = hashlib.sha256(receipt.encode()).hexdigest()
        await client.send_message(QueueUrl=dead_url, **entry)
        await self.ack(delivery)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        receipts = [r for d in deliveries if (r := self._held.pop(d, None)) is not None]
        if receipts:
            await self._change_visibility(receipts, 0)

    async def close(self) -> None:
        """Give back what is held, after waiting for receives still running (at most the
        long-poll time, ``sqs.wait_time_seconds``)."""
        self._closed = True
        while self._orphans:
            await asyncio.wait(set(self._orphans), timeout=self.settings.wait_time_seconds + 5)
            if any(not o.done() for o in self._orphans):
                break
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            await self.release(list(self._held))
        finally:
            await self.flush()
