"""The Redis broker, in Go Machinery's layout (needs the ``redis`` extra).

* A queue is a LIST named after the queue; producers ``RPUSH`` the Signature
  JSON, with the RoutingKey filled in.
* A task whose ETA is in the future goes to the ZSET ``delayed_tasks``
  (``redis.delayed_tasks_key``) scored by its ETA in Unix nanoseconds;
  :class:`~.delayed.DelayedMover` moves it to its RoutingKey's list when
  due.
* Workers claim messages into a processing list and ack them only after the
  final state is recorded (:mod:`.consumer`), so a Go worker (BLPOP)
  and a Python worker can share one queue and one delayed set, and a Python
  worker that dies loses nothing.

The Redis page of the docs (``docs/redis.md``) describes the guarantees.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...gotime import unix_nanos
from ...log import get_logger
from ...signature import InvalidMessageError, Signature
from ..broker import Broker, BrokerCapabilities, Consumer, DeadLetter
from ..registry import WorkerRegistry
from . import workers
from .batcher import Command, CommandBatcher, RedisHandle, run_script
from .connection import RedisClient, is_cluster
from .consumer import RedisConsumer
from .delayed import DelayedMover
from .keys import QueueKeys
from .queue_scripts import DELETE_DEAD, PURGE, REQUEUE_DEAD, REQUEUE_DEAD_BATCH

if TYPE_CHECKING:
    from ...config import Config
    from ..ratelimit import RateLimiter

__all__ = ["RedisBroker"]

logger = get_logger("machinery_aio.drivers.redis.broker")


class RedisBroker(Broker, WorkerRegistry):
    """Publishes to and consumes from Redis lists, as Go Machinery lays them out."""

    capabilities = BrokerCapabilities(edit_dead_letters=True)

    def __init__(self, config: Config, url: str | None = None) -> None:
        super().__init__(config, url)
        self.cluster = is_cluster(self.url, config)
        self._redis = RedisHandle.shared(self.url, config, self)
        self._mover: DelayedMover | None = None
        self._consumers = 0
        self._limiter: RateLimiter | None = None

    # -- connections ---------------------------------------------------------------

    @property
    def client(self) -> RedisClient:
        return self._redis.client

    @property
    def batcher(self) -> CommandBatcher:
        return self._redis.batcher

    def rate_limiter(self) -> RateLimiter:
        """Limits shared by every worker on this Redis (``ratelimit.py``)."""
        if self._limiter is None:
            from .ratelimit import RedisRateLimiter

            self._limiter = RedisRateLimiter(self)
        return self._limiter

    async def connect(self) -> None:
        self._redis.attach(self)
        await self._redis.reach()

    async def close(self) -> None:
        if self._mover is not None:
            await self._mover.stop()
            self._mover = None
        await self._redis.close(self)

    # -- settings ------------------------------------------------------------------------

    @property
    def delayed_key(self) -> str:
        return self.config.redis.delayed_tasks_key or "delayed_tasks"

    @property
    def consumer_timeout(self) -> float:
        """Seconds without a heartbeat after which a consumer is presumed dead."""
        return float(self.config.redis.consumer_timeout)

    @property
    def max_block(self) -> float:
        """The longest a consumer blocks in BLMOVE: below the read timeout and the
        heartbeat interval, so a blocked consumer never looks dead."""
        limit = self.consumer_timeout / 3
        read_timeout = self.config.redis.read_timeout
        if read_timeout:
            limit = min(limit, max(0.1, read_timeout - 1.0))
        return limit

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, signature: Signature) -> None:
        await self.publish_many([signature])

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        """RPUSH each queue's messages in one command (in order), ZADD the delayed ones."""
        now_ns = time.time_ns()
        queues: dict[str, list[bytes]] = {}
        delayed: list[Any] = []
        earliest: float | None = None
        for sig in signatures:
            self.adjust_routing_key(sig)
            body = sig.to_json()
            if sig.eta is not None:
                score = unix_nanos(sig.eta)
                if score > now_ns:
                    delayed += [score, body]
                    due = score / 1e9
                    earliest = due if earliest is None else min(earliest, due)
                    continue
            queues.setdefault(sig.routing_key, []).append(body)
        commands = [Command.of("RPUSH", queue, *bodies) for queue, bodies in queues.items()]
        if delayed:
            commands.append(Command.of("ZADD", self.delayed_key, *delayed))
        if len(commands) == 1:
            await self.batcher.run(commands[0])
        elif commands:
            await self.batcher.execute_all(commands)
        if earliest is not None:
            self.delayed_added(earliest)

    def delayed_added(self, due_unix: float) -> None:
        """A task due at ``due_unix`` (s) went into the delayed set: wake this process's mover
        in time for it."""
        if self._mover is not None:
            self._mover.wake(due_unix)

    # -- consuming -------------------------------------------------------------------------

    def consumer(self, queue: str, *, prefetch: int, tag: str) -> Consumer:
        return RedisConsumer(self, queue, prefetch=prefetch, tag=tag)

    def consumer_started(self) -> None:
        """A consumer started: make sure this process moves due delayed tasks."""
        self._consumers += 1
        if self._mover is None:
            self._mover = self._new_mover((self.config.redis.delayed_tasks_poll_period or 500) / 1000)
        self._mover.start()

    def _new_mover(self, poll_period: float) -> DelayedMover:
        return DelayedMover(
            self.client,
            delayed_key=self.delayed_key,
            default_queue=self.config.default_queue,
            poll_period=poll_period,
            cluster=self.cluster,
            heartbeat_timeout=max(10.0, self.consumer_timeout),
        )

    async def consumer_stopped(self) -> None:
        self._consumers -= 1
        if self._consumers <= 0 and self._mover is not None:
            await self._mover.stop()

    async def move_delayed(self) -> int:
        """Move every due delayed task to its queue now; returns how many were moved."""
        mover = self._mover or self._new_mover(0.5)
        moved, _ = await mover.move_due()
        return moved

    # -- inspection and admin ----------------------------------------------------------------

    async def get_pending_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks waiting in ``queue`` (not those claimed by a worker), oldest first."""
        if limit == 0:
            return []
        name = queue or self.config.default_queue
        bodies = await self.client.execute_command("LRANGE", name, 0, _last(limit))
        return _decode_all(bodies, f"queue {name!r}")

    async def count_pending(self, queue: str | None = None) -> int:
        return int(await self.client.execute_command("LLEN", queue or self.config.default_queue))

    async def get_held_tasks(self, queue: str | None = None, limit: int | None = None) -> list[Signature]:
        """Tasks taken from ``queue`` and not finished: those in its consumers' processing
        lists (running, or acked but not yet confirmed), then those handed back for later
        (names no worker knows), which wait in the delayed set without an ETA of their own."""
        if limit == 0:
            return []
        name = queue or self.config.default_queue
        keys = QueueKeys(name)
        bodies: list[bytes] = []
        for consumer in await self.client.execute_command("ZRANGE", keys.consumers, 0, -1):
            left = None if limit is None else limit - len(bodies)
            if left is not None and left <= 0:
                break
            processing = keys.processing(consumer.decode())
            bodies += await self.client.execute_command("LRANGE", processing, 0, _last(left))
        held = _decode_all(bodies, f"the processing lists of {name!r}")
        left = None if limit is None else limit - len(held)
        return held + await self._handed_back(name, left)

    async def _handed_back(self, queue: str, limit: int | None) -> list[Signature]:
        """Hand-backs of ``queue`` in the delayed set: due later than the ETA they carry."""
        found: list[Signature] = []
        for start in range(0, HELD_SCAN, 500):
            if limit is not None and len(found) >= limit:
                break
            chunk: Any = await self.client.zrange(self.delayed_key, start, start + 499, withscores=True)
            if not chunk:
                break
            for body, score in chunk:
                try:
                    sig = Signature.from_json(body)
                except InvalidMessageError:
                    continue
                if (sig.routing_key or self.config.default_queue) != queue:
                    continue
                if sig.eta is None or unix_nanos(sig.eta) < float(score) - 1e9:
                    found.append(sig)
        return found[:limit]

    async def get_delayed_tasks(self, limit: int | None = None) -> list[Signature]:
        """Tasks waiting for their ETA, earliest first."""
        if limit == 0:
            return []
        bodies = await self.client.execute_command("ZRANGE", self.delayed_key, 0, _last(limit))
        return _decode_all(bodies, f"delayed set {self.delayed_key!r}")

    async def get_dead_letters(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Messages set aside from ``queue``, with the reasons, oldest first."""
        if limit == 0:
            return []
        keys = QueueKeys(queue or self.config.default_queue)
        raw = await self.client.execute_command("LRANGE", keys.dead, 0, _last(limit))
        return [DeadLetter.model_validate_json(item) for item in raw]

    async def purge(self, queue: str | None = None) -> int:
        """Delete every task waiting in ``queue``; returns how many there were."""
        count = await run_script(self.client, PURGE, [queue or self.config.default_queue])
        return int(count)

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue``; returns how many there were."""
        keys = QueueKeys(queue or self.config.default_queue)
        count = await run_script(self.client, PURGE, [keys.dead])
        return int(count)

    async def count_dead_letters(self, queue: str | None = None) -> int:
        keys = QueueKeys(queue or self.config.default_queue)
        return int(await self.client.execute_command("LLEN", keys.dead))

    async def requeue_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        name = queue or self.config.default_queue
        keys = QueueKeys(name)
        if letters is None:
            total = 0
            while True:  # in batches, so one script never blocks Redis for long
                moved = int(await run_script(self.client, REQUEUE_DEAD_BATCH, [keys.dead, name], [500]))
                total += moved
                if moved < 500:
                    return total
        count = 0
        for letter in letters:
            args = [letter.model_dump_json(), letter.body]
            count += int(await run_script(self.client, REQUEUE_DEAD, [keys.dead, name], args))
        return count

    async def delete_dead_letters(
        self, queue: str | None = None, letters: Sequence[DeadLetter] | None = None
    ) -> int:
        if letters is None:
            return await self.purge_dead_letters(queue)
        keys = QueueKeys(queue or self.config.default_queue)
        count = 0
        for letter in letters:
            count += int(await run_script(self.client, DELETE_DEAD, [keys.dead], [letter.model_dump_json()]))
        return count

    # -- worker registry (heartbeats) ----------------------------------------------------

    async def record_worker(self, key: str, data: bytes, expires_at: float) -> None:
        await workers.record_worker(self.client, key, data, expires_at)

    async def remove_worker(self, key: str) -> None:
        await workers.remove_worker(self.client, key)

    async def list_workers(self) -> list[bytes]:
        return await workers.list_workers(self.client)


HELD_SCAN = 10_000
"""At most this many delayed tasks are read to find the hand-backs of a queue."""


def _last(limit: int | None) -> int:
    """The last index of an LRANGE/ZRANGE for ``limit`` items (-1: all)."""
    return -1 if limit is None else limit - 1


def _decode_all(bodies: list[bytes], where: str) -> list[Signature]:
    out = []
    bad = 0
    for body in bodies:
        try:
            out.append(Signature.from_json(body))
        except InvalidMessageError:
            bad += 1
    if bad:
        logger.warning(
            "%s holds %d messages that are not valid Signatures (not listed; a worker "
            "will set them aside as dead letters)",
            where,
            bad,
        )
    return out
