"""A reliable consumer of one Redis list: claim, ack, heartbeat, reap.

Messages are claimed atomically from the head of the queue into this
consumer's own processing list (``{queue}:processing:<id>``): a batch by a
Lua script when messages are waiting, one by ``BLMOVE`` (blocking, no polling)
when the queue is empty. A message leaves the processing list only when it is
acked (after its final state is recorded), requeued, released or
dead-lettered. The consumer is registered in ``{queue}:consumers`` with a
heartbeat deadline; every live consumer of the queue returns the processing
lists of consumers whose deadline passed to the head of the queue. A worker
killed with SIGKILL therefore loses nothing: its messages run again elsewhere
after ``redis.consumer_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...gotime import format_time, now
from ...log import get_logger
from ..broker import Consumer, DeadLetter, Delivery
from .batcher import LuaScript, run_script
from .connection import cancel_and_wait
from .delayed import routing_key_of
from .keys import QueueKeys
from .queue_scripts import ACK, CLAIM, DEAD_LETTER, HAND_BACK, HEARTBEAT, RELEASE, REQUEUE, RETURN_ALL

if TYPE_CHECKING:
    from .broker import RedisBroker

__all__ = ["RedisConsumer"]

logger = get_logger("machinery_aio.drivers.redis.broker")


class RedisConsumer(Consumer):
    """A worker's reliable view of one Redis queue (see the module docstring)."""

    def __init__(self, broker: RedisBroker, queue: str, *, prefetch: int, tag: str) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.keys = QueueKeys(queue)
        self.consumer_id = f"{tag or 'consumer'}-{uuid.uuid4().hex[:8]}"
        self.processing = self.keys.processing(self.consumer_id)
        timeout = broker.consumer_timeout
        self.timeout_ms = max(1, int(timeout * 1000))
        self.heartbeat_interval = timeout / 3
        self._held: dict[int, Delivery] = {}
        self._later: dict[int, tuple[Delivery, asyncio.TimerHandle]] = {}
        self._unacked: list[Delivery] = []  # acked, not yet confirmed by Redis
        self._acking: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._reconcile = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._room = asyncio.Event()  # set when a delivery is settled

    # -- fetching ----------------------------------------------------------------------

    @property
    def wait(self) -> float:
        """Seconds one fetch blocks on an empty queue: ``redis.normal_tasks_poll_period``,
        below the broker's longest safe block."""
        period = self.broker.config.redis.normal_tasks_poll_period / 1000
        return min(max(0.1, period), self.broker.max_block)

    async def fetch(self, max_count: int) -> list[Delivery]:
        if self._closed:
            return []
        room = min(max_count, self.prefetch - len(self._held))
        if room <= 0:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), self.wait)
            return []
        if not self._started:
            await self._start()
        if self._unacked and self._acking is None:  # left over by a failed ack
            await self._retry_acks()
        if self._reconcile:
            await self._return_untracked()
        bodies = await self._claim(room)
        if bodies:
            return self._deliver(bodies)
        wait = self.wait
        try:
            body: bytes | None = await self.broker.client.execute_command(
                "BLMOVE", self.queue, self.processing, "LEFT", "RIGHT", round(wait, 3)
            )
        except BaseException:
            # Cancelled or disconnected: Redis may still have moved a message into
            # the processing list. Give back whatever we do not know about.
            self._reconcile = True
            raise
        if body is None or self._closed:
            if body is not None:
                self._reconcile = True
            return []
        return self._deliver([body])

    async def _claim(self, count: int) -> list[bytes]:
        try:
            bodies: list[bytes] = await self.broker.batcher.script(
                CLAIM,
                [self.queue, self.processing, self.keys.consumers],
                [count, self.consumer_id, self.timeout_ms],
            )
        except BaseException:
            # As for BLMOVE: Redis may have run the claim and lost only the reply.
            self._reconcile = True
            raise
        return bodies

    def _deliver(self, bodies: list[bytes]) -> list[Delivery]:
        out = []
        for body in bodies:
            delivery = Delivery(body, self.queue)
            self._held[id(delivery)] = delivery
            out.append(delivery)
        return out

    # -- settling ----------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """Queue the removal of ``delivery``'s claim and return: the acks of one event-loop
        iteration go to Redis together, in the background. Until Redis confirms, the claim
        stays (a crash now means a redelivery, never a loss); a failed ack is retried at
        the next fetch or heartbeat, and :meth:`close` waits for every ack."""
        if self._held.pop(id(delivery), None) is None:
            return
        self._room.set()
        self._unacked.append(delivery)
        self._start_acks()

    def _start_acks(self) -> asyncio.Task[None]:
        """The task sending the queued acks (started if none is under way)."""
        if self._acking is None:
            self._acking = asyncio.get_running_loop().create_task(self._send_acks())
        return self._acking

    async def _send_acks(self) -> None:
        try:
            while self._unacked:
                batch = list(self._unacked)
                await self.broker.batcher.script(ACK, [self.processing], [d.body for d in batch])
                del self._unacked[: len(batch)]
        except Exception as exc:
            logger.warning(
                "acking %d messages of %r failed: %s; retrying at the next fetch",
                len(self._unacked),
                self.queue,
                exc,
            )
        finally:
            self._acking = None

    async def flush(self) -> None:
        await self._retry_acks()
        if self._unacked:
            raise ConnectionError(f"{len(self._unacked)} acks could not be sent to Redis")

    async def _retry_acks(self) -> None:
        """Wait for the acks under way, then send any left over by a failure."""
        if self._acking is not None:
            await asyncio.shield(self._acking)
        if self._unacked:
            await asyncio.shield(self._start_acks())

    async def requeue(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Back to the tail of the queue, bytes unchanged. With a delay, it waits in the
        delayed set (like a task with an ETA) and the mover puts it back when due; a message
        whose RoutingKey names another queue stays claimed here (surviving a crash) until the
        delay is over instead, so that it comes back to this queue."""
        if id(delivery) not in self._held:
            return
        if delay <= 0 or self._closed:
            await self._requeue_now(delivery)
            return
        if routing_key_of(delivery.body, self.broker.config.default_queue) == self.queue:
            await self._delay(delivery, delay)
            return
        self._held.pop(id(delivery))
        self._room.set()
        handle = asyncio.get_running_loop().call_later(delay, self._requeue_later, delivery)
        self._later[id(delivery)] = (delivery, handle)

    def _requeue_later(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._requeue_held_later(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _requeue_held_later(self, delivery: Delivery) -> None:
        try:
            await self.broker.batcher.script(REQUEUE, [self.processing, self.queue], [delivery.body])
        except Exception as exc:
            logger.error(
                "could not hand a message back to %r: %s; the next fetch returns it", self.queue, exc
            )
            self._reconcile = True
        self._later.pop(id(delivery), None)

    async def _delay(self, delivery: Delivery, delay: float) -> None:
        broker = self.broker
        due = time.time_ns() + int(delay * 1e9)
        if broker.cluster:
            # The processing list and the delayed set are in different slots: add, then drop
            # the claim (a crash in between delivers the message twice, never loses it).
            await broker.batcher.execute("ZADD", broker.delayed_key, due, delivery.body)
            await self._settle([delivery], ACK, [self.processing], [delivery.body])
        else:
            await self._settle(
                [delivery], HAND_BACK, [self.processing, broker.delayed_key], [delivery.body, due]
            )
        broker.delayed_added(due / 1e9)

    async def _requeue_now(self, delivery: Delivery) -> None:
        await self._settle([delivery], REQUEUE, [self.processing, self.queue], [delivery.body])

    async def _settle(
        self,
        deliveries: Sequence[Delivery],
        script: LuaScript,
        keys: list[str],
        args: Sequence[bytes | str | int],
    ) -> None:
        """Run a script that moves ``deliveries`` out of the processing list. If it fails,
        the next fetch returns the messages to the queue (they are no longer tracked)."""
        try:
            await self.broker.batcher.script(script, keys, args)
        except Exception:
            self._reconcile = True
            raise
        finally:
            for delivery in deliveries:
                self._held.pop(id(delivery), None)
            self._room.set()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if id(delivery) not in self._held:
            return
        letter = DeadLetter(
            queue=self.queue,
            reason=reason,
            body=delivery.body.decode("utf-8", "backslashreplace"),
            failed_at=format_time(now()),
        )
        await self._settle(
            [delivery],
            DEAD_LETTER,
            [self.processing, self.keys.dead],
            [delivery.body, letter.model_dump_json()],
        )

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        mine = [d for d in deliveries if id(d) in self._held]
        if mine:
            await self._settle(mine, RELEASE, [self.processing, self.queue], [d.body for d in mine])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            await cancel_and_wait(self._heartbeat)
        for _, handle in self._later.values():
            handle.cancel()
        for task in list(self._tasks):
            await cancel_and_wait(task)
        try:
            await self.broker.batcher.drain()
            await self._retry_acks()
            if self._started:
                returned = await run_script(
                    self.broker.client,
                    RETURN_ALL,
                    [self.keys.consumers, self.processing, self.queue],
                    [self.consumer_id, "0"],
                )
                if returned:
                    logger.info("returned %d unfinished messages to %r", returned, self.queue)
        finally:
            self._held.clear()
            self._later.clear()
            self._unacked.clear()
            if self._started:
                await self.broker.consumer_stopped()

    # -- liveness ------------------------------------------------------------------------

    async def _start(self) -> None:
        await self.beat()
        self._started = True
        self.broker.consumer_started()
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(), name=f"heartbeat-{self.consumer_id}"
        )

    async def beat(self) -> int:
        """Renew this consumer's heartbeat and return the messages of dead consumers to
        the queue; returns how many were returned."""
        dead: list[bytes] = await run_script(
            self.broker.client,
            HEARTBEAT,
            [self.keys.consumers],
            [self.consumer_id, self.timeout_ms],
        )
        returned = 0
        for raw in dead:
            other = raw.decode()
            if other == self.consumer_id:
                continue
            count = await run_script(
                self.broker.client,
                RETURN_ALL,
                [self.keys.consumers, self.keys.processing(other), self.queue],
                [other, "1"],
            )
            if count > 0:
                logger.warning(
                    "consumer %s of %r stopped sending heartbeats; returned its %d "
                    "unfinished messages to the queue",
                    other,
                    self.queue,
                    count,
                )
                returned += count
        await self._check_untracked()
        return returned

    async def _check_untracked(self) -> None:
        """redis-py re-sends a command after a dropped connection, so a claim Redis ran
        whose reply was lost runs twice and leaves messages no delivery stands for:
        when the processing list holds more than we track, the next fetch gives them back."""
        claimed: int = await self.broker.client.llen(self.processing)
        if claimed > len(self._held) + len(self._later) + len(self._unacked):
            self._reconcile = True

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.beat()
                await self._retry_acks()
            except Exception as exc:
                logger.warning("heartbeat of consumer %s failed: %s", self.consumer_id, exc)

    async def _return_untracked(self) -> None:
        """Give back messages in our processing list that no delivery stands for."""
        items: list[bytes] = await self.broker.client.execute_command("LRANGE", self.processing, 0, -1)
        tracked = Counter(d.body for d in self._held.values())
        tracked.update(d.body for d, _ in self._later.values())
        tracked.update(d.body for d in self._unacked)
        extra = []
        for body in items:
            if tracked[body] > 0:
                tracked[body] -= 1
            else:
                extra.append(body)
        if extra:
            await run_script(self.broker.client, RELEASE, [self.processing, self.queue], extra)
            logger.info("returned %d interrupted claims to %r", len(extra), self.queue)
        self._reconcile = False

    def __repr__(self) -> str:
        return f"<RedisConsumer {self.consumer_id} of {self.queue!r}>"
