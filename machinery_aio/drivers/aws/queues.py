"""SQS queue URLs by name: looked up once, created when missing (unless turned off)."""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ClientError

from ...config import ConfigError
from .client import Clients

__all__ = [
    "MAX_DELAY",
    "MAX_MESSAGE_BYTES",
    "MISSING_QUEUE",
    "Queues",
    "dead_letter_name",
    "error_code",
    "is_fifo",
]

MAX_MESSAGE_BYTES = 262_144
"""SQS's limit on one message, and on one SendMessageBatch call (256 KiB)."""
MAX_DELAY = 900
"""SQS's longest ``DelaySeconds`` (15 minutes)."""
MAX_VISIBILITY = 43_200
"""SQS's longest visibility timeout (12 hours)."""
MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def is_fifo(name: str) -> bool:
    return name.endswith(".fifo")


def dead_letter_name(name: str) -> str:
    """``<queue>_dead`` (``<queue>_dead.fifo`` for a FIFO queue): where bad messages go."""
    return f"{name[:-5]}_dead.fifo" if is_fifo(name) else f"{name}_dead"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Queues:
    """Queue URLs of one account, cached by name."""

    def __init__(self, clients: Clients, account: str, create: bool) -> None:
        self.clients = clients
        self.account = account
        self.create = create
        self._urls: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def url(self, name: str) -> str:
        """The queue's URL, creating the queue when missing and allowed."""
        url = self._urls.get(name)
        if url is not None:
            return url
        async with self._locks.setdefault(name, asyncio.Lock()):
            url = self._urls.get(name)
            if url is None:
                url = await self._lookup(name, self.create)
                if url is None:
                    raise ConfigError(
                        f"SQS queue {name!r} does not exist; create it, or let machinery-aio create "
                        "it (sqs.create_queues, SQS_CREATE_QUEUES)"
                    )
                self._urls[name] = url
            return url

    async def existing_url(self, name: str) -> str | None:
        """The queue's URL, or None when it does not exist (never creates it)."""
        url = self._urls.get(name)
        if url is None:
            url = await self._lookup(name, False)
            if url is not None:
                self._urls[name] = url
        return url

    def forget(self, name: str) -> None:
        """Look the queue up again next time (it was deleted, or the emulator restarted)."""
        self._urls.pop(name, None)

    async def _lookup(self, name: str, create: bool) -> str | None:
        client = await self.clients.get()
        args: dict[str, Any] = {"QueueName": name}
        if self.account:
            args["QueueOwnerAWSAccountId"] = self.account
        try:
            response = await client.get_queue_url(**args)
            return str(response["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) not in MISSING_QUEUE:
                raise
        if not create:
            return None
        attributes = {"FifoQueue": "true"} if is_fifo(name) else {}
        response = await client.create_queue(QueueName=name, Attributes=attributes)
        return str(response["QueueUrl"])
