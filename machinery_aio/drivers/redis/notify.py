"""Wake result waiters when a final state is written, without sleep-polling.

The Redis backend PUBLISHes a task's final TaskState JSON on the channel
``machinery_aio:done:<task uuid>`` in the same script that stores it. A
process waiting for results keeps one pub/sub connection: a waiter subscribes
to its task's channel, waits for Redis to confirm, then reads the state (so a
state written before the subscription is seen by the read, and one written
after it is seen as a message). Go workers do not publish, so waiting also
re-reads the state now and then (see ``RedisBackend.wait_for_state``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ...log import get_logger
from .connection import RedisClient, cancel_and_wait

__all__ = ["CHANNEL_PREFIX", "ResultNotifier", "Watch"]

logger = get_logger("machinery_aio.drivers.redis.backend")

CHANNEL_PREFIX = "machinery_aio:done:"
CONFIRM_TIMEOUT = 5.0
"""Seconds to wait for Redis to confirm a subscription before relying on re-reads."""


class Watch:
    """One waiter's subscription to one task's channel."""

    __slots__ = ("_channel", "_seen")

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._seen = channel.received

    async def wait(self, timeout: float | None) -> bytes | None:
        """The published state JSON, or None on timeout or when the state should be re-read.

        A message that arrived since the last call (even while the waiter was busy
        reading the state) is returned at once.
        """
        channel = self._channel
        if channel.received != self._seen:
            self._seen = channel.received
            return channel.last
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        channel.waiters.add(future)
        try:
            data = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            channel.waiters.discard(future)
        self._seen = channel.received
        return data


class _Channel:
    __slots__ = ("confirmed", "last", "received", "refs", "waiters")

    def __init__(self) -> None:
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refs = 0
        self.received = 0
        self.last: bytes | None = None
        self.waiters: set[asyncio.Future[bytes | None]] = set()

    def wake(self, data: bytes | None) -> None:
        if data is not None:
            self.last = data
            self.received += 1
        for future in self.waiters:
            if not future.done():
                future.set_result(data)


class ResultNotifier:
    """One pub/sub connection per backend, shared by every waiter in the process."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._channels: dict[bytes, _Channel] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def watch(self, task_uuid: str) -> AsyncIterator[Watch]:
        """Subscribe to ``task_uuid``'s channel for the duration of the block."""
        name = (CHANNEL_PREFIX + task_uuid).encode()
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
            try:
                await self._subscribe(name)
            except Exception:
                self._channels.pop(name, None)
                raise
        channel.refs += 1
        try:
            if not channel.confirmed.done():
                try:
                    await asyncio.wait_for(asyncio.shield(channel.confirmed), CONFIRM_TIMEOUT)
                except TimeoutError:
                    logger.warning(
                        "Redis did not confirm a result subscription in %g s; "
                        "waiting by re-reading the state",
                        CONFIRM_TIMEOUT,
                    )
            yield Watch(channel)
        finally:
            channel.refs -= 1
            if channel.refs <= 0 and self._channels.get(name) is channel:
                del self._channels[name]
                await self._unsubscribe(name)

    async def _subscribe(self, name: bytes) -> None:
        async with self._lock:
            if self._pubsub is None:
                initialize = getattr(self.client, "initialize", None)
                if initialize is not None:  # a cluster client learns its nodes first
                    await initialize()
                self._pubsub = self.client.pubsub()
            await self._pubsub.subscribe(name)
            if self._listener is None or self._listener.done():
                self._listener = asyncio.get_running_loop().create_task(
                    self._listen(), name="redis-result-notifier"
                )

    async def _unsubscribe(self, name: bytes) -> None:
        try:
            async with self._lock:
                if self._pubsub is not None:
                    await self._pubsub.unsubscribe(name)
        except Exception as exc:
            logger.debug("unsubscribing from %r failed: %s", name, exc)

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                logger.warning("result notifications interrupted (%s); retrying in %.1f s", exc, delay)
                for channel in self._channels.values():
                    channel.wake(None)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if message is None:
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = self._channels.get(message.get("channel") or b"")
        if channel is None:
            return
        if kind == "message":
            channel.wake(message.get("data"))
        elif kind == "subscribe":
            if channel.confirmed.done():
                # Subscribed again after a reconnect: messages may have been missed.
                channel.wake(None)
            else:
                channel.confirmed.set_result(None)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await cancel_and_wait(listener)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception as exc:
                logger.debug("closing the result pub/sub connection failed: %s", exc)
        for channel in self._channels.values():
            channel.wake(None)
