"""The delayed-task mover: due tasks go from the ``delayed_tasks`` ZSET to their queues.

Go Machinery moves one task per ``DelayedTasksPollPeriod`` (500 ms) per
worker. Here one mover per broker process moves every due task in one step,
then sleeps until the earliest remaining task is due, bounded by the poll
period (other processes, Go ones included, may add earlier tasks), and is
woken early when this process publishes an earlier one.

* Single Redis: one Lua script takes the due members, RPUSHes each (bytes
  unchanged) to the list named by its ``RoutingKey`` and ZREMs it. Nothing
  is ever half-moved.
* Redis Cluster: the ZSET and the queues are in different slots, so no
  script can cover both. A script moves the due members atomically into this
  mover's staging list (in the ZSET's slot); the mover then pushes them to
  their queues and deletes the staging list. A mover that dies in between
  leaves its staging list behind with an expired heartbeat; any other mover
  puts those tasks back into the ZSET as due. A task can therefore be pushed
  twice (at least once), never lost.

Go's own mover (WATCH/ZRANGEBYSCORE/MULTI ZREM) can run beside this one: a
member is moved by whoever removes it from the ZSET.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from typing import Any

from ...log import get_logger
from .batcher import run_script
from .connection import RedisClient, cancel_and_wait
from .keys import DelayedKeys
from .queue_scripts import MOVE_DUE, RECOVER_STAGING, STAGE_DUE

__all__ = ["DelayedMover", "routing_key_of"]

logger = get_logger("machinery_aio.drivers.redis.broker")

BATCH = 1000
"""At most this many tasks are moved per script call (the mover loops while more are due)."""


def routing_key_of(body: bytes, default: str) -> str:
    """The RoutingKey of a message (Go matches keys case-insensitively), else ``default``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return default
    if not isinstance(doc, dict):
        return default
    key = doc.get("RoutingKey")
    if key is None:
        for name, value in doc.items():
            if name.lower() == "routingkey":
                key = value
    return key if isinstance(key, str) and key else default


class DelayedMover:
    """Moves due delayed tasks to their queues until stopped."""

    def __init__(
        self,
        client: RedisClient,
        *,
        delayed_key: str,
        default_queue: str,
        poll_period: float,
        cluster: bool,
        heartbeat_timeout: float,
    ) -> None:
        self.client = client
        self.keys = DelayedKeys(delayed_key)
        self.default_queue = default_queue
        self.poll_period = poll_period
        self.cluster = cluster
        self.heartbeat_timeout_ms = int(heartbeat_timeout * 1000)
        self.mover_id = uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._next_due: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"delayed-mover-{self.mover_id}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def wake(self, due_unix: float) -> None:
        """A task due at ``due_unix`` (s) was just published here; wake up in time for it."""
        if self._next_due is None or due_unix < self._next_due:
            self._wake.set()

    async def move_due(self) -> tuple[int, float | None]:
        """Move every task due now; return (moved, the earliest remaining due time in Unix s)."""
        total = 0
        while True:
            if self.cluster:
                moved, earliest = await self._move_cluster()
            else:
                moved, earliest = await self._move_single()
            total += moved
            if moved < BATCH:
                return total, earliest

    async def _move_single(self) -> tuple[int, float | None]:
        reply = await run_script(
            self.client,
            MOVE_DUE,
            [self.keys.delayed],
            [time.time_ns(), BATCH, self.default_queue],
        )
        return int(reply[0]), _score(reply[1])

    async def _move_cluster(self) -> tuple[int, float | None]:
        staging = self.keys.staging(self.mover_id)
        items, earliest, dead = await run_script(
            self.client,
            STAGE_DUE,
            [self.keys.delayed, staging, self.keys.movers],
            [time.time_ns(), BATCH, self.mover_id, self.heartbeat_timeout_ms],
        )
        for mover in dead:
            await self._recover(mover.decode())
        if items:
            by_queue: dict[str, list[bytes]] = defaultdict(list)
            for body in items:
                by_queue[routing_key_of(body, self.default_queue)].append(body)
            pipe = self.client.pipeline(transaction=False)
            for queue, bodies in by_queue.items():
                pipe.rpush(queue, *bodies)
            await pipe.execute()
            await self.client.delete(staging)
        return len(items), _score(earliest)

    async def _recover(self, mover: str) -> None:
        if mover == self.mover_id:
            return
        count = await run_script(
            self.client,
            RECOVER_STAGING,
            [self.keys.movers, self.keys.staging(mover), self.keys.delayed],
            [mover],
        )
        if count > 0:
            logger.warning(
                "delayed-task mover %s died while moving %d tasks; they are due again", mover, count
            )

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                _, earliest = await self.move_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                logger.error(
                    "moving delayed tasks from %r failed: %s; retrying in %.1f s",
                    self.keys.delayed,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            sleep = self.poll_period
            if earliest is not None:
                sleep = min(sleep, max(0.001, earliest - time.time()))
            self._next_due = time.time() + sleep
            try:
                await asyncio.wait_for(self._wake.wait(), sleep)
            except TimeoutError:
                pass
            self._next_due = None


def _score(value: Any) -> float | None:
    """A ZSET score in Unix ns (bytes from Redis) as Unix seconds; None for ''."""
    if not value:
        return None
    return float(value) / 1e9
