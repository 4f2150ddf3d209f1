"""A Signature as an SQS message: the body, the delay and FIFO's group and deduplication IDs."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from ...gotime import now, parse_time
from ...signature import Signature
from .queues import MAX_DELAY, MAX_MESSAGE_BYTES, is_fifo

__all__ = ["MessageTooLargeError", "message_entry", "seconds_until_eta"]


class MessageTooLargeError(ValueError):
    """A task's message is over SQS's 256 KiB limit; nothing was sent."""


def message_entry(signature: Signature, queue: str) -> dict[str, Any]:
    """``SendMessage`` arguments for ``signature`` (without ``QueueUrl``).

    The body is the Signature JSON exactly as Go sends it, with no message attributes. On a
    standard queue an ETA becomes ``DelaySeconds``, rounded up (Go rounds down, so a task
    could run early) and capped at 15 minutes: the consumer hides a message that arrives
    before its ETA until it is due. FIFO queues have no per-message delay; the consumer
    does the same there.
    """
    body = signature.to_json()
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"task {signature.name} {signature.uuid} is {len(body)} bytes, over SQS's limit of "
            f"{MAX_MESSAGE_BYTES} bytes (256 KiB); pass large data by reference (an S3 key, say)"
        )
    entry: dict[str, Any] = {"MessageBody": body.decode()}
    if is_fifo(queue):
        entry["MessageGroupId"] = signature.broker_message_group_id or signature.uuid
        digest = hashlib.sha256(body).hexdigest()[:32]
        entry["MessageDeduplicationId"] = f"{signature.uuid}-{digest}"
    elif signature.eta is not None:
        delay = seconds_until(signature.eta)
        if delay > 0:
            entry["DelaySeconds"] = min(MAX_DELAY, math.ceil(delay))
    return entry


def seconds_until(eta: datetime) -> float:
    return (eta - now()).total_seconds()


def seconds_until_eta(body: bytes) -> float:
    """Seconds until the ETA in a message body; 0 when it has none, is due, or cannot be read
    (the worker deals with a body it cannot read)."""
    if b'"ETA":null' in body:
        return 0.0
    try:
        eta = json.loads(body).get("ETA")
        return max(0.0, seconds_until(parse_time(eta))) if isinstance(eta, str) and eta else 0.0
    except (ValueError, AttributeError):
        return 0.0
