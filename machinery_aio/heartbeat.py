"""Worker heartbeats: every worker announces itself in the broker's or backend's registry.

A running worker writes a :class:`WorkerInfo` every ``interval`` seconds to the
:class:`~machinery_aio.drivers.registry.WorkerRegistry` of its result backend (or, if the
backend keeps none, of its broker), valid for four intervals; it removes it when it stops.
:func:`live_workers` reads the records that have not expired: a worker that dies
without a word drops out once its last record expires.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from .counts import WorkerView
from .drivers.registry import WorkerRegistry
from .log import get_logger
from .urls import mask_secrets

__all__ = ["HEARTBEAT_INTERVAL", "FailureNote", "Heartbeat", "WorkerInfo", "live_workers", "registry_of"]

logger = get_logger("machinery_aio.heartbeat")

HEARTBEAT_INTERVAL = 5.0
"""Seconds between a worker's heartbeats; a record is valid for four of them."""
MISSED_BEATS = 4


class FailureNote(BaseModel):
    """One of a worker's latest final failures (shown by the dashboard)."""

    at: datetime
    uuid: str
    name: str
    error: str


class WorkerInfo(BaseModel):
    """What a worker says about itself in each heartbeat."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    """0 means unlimited."""
    running: int
    processed: int
    """Runs finished, whatever their outcome."""
    failed: int
    """Runs that ended in a final FAILURE."""
    retried: int = 0
    started_at: datetime
    seen_at: datetime
    """When this record was written (the worker's clock)."""
    timeout: float
    """Seconds after ``seen_at`` until the record expires."""
    version: str
    broker: str = ""
    """The broker's URL, password masked."""
    recent_failures: list[FailureNote] = []
    """The worker's latest final failures, oldest first."""

    @property
    def key(self) -> str:
        """The record's key in the registry: unique per worker process."""
        return f"{self.host}:{self.pid}:{self.name}"


def registry_of(*candidates: Any) -> WorkerRegistry | None:
    """The first of ``candidates`` (a backend, then a broker) that keeps a worker registry,
    preferring one other processes can read over an in-process one."""
    registries = [c for c in candidates if isinstance(c, WorkerRegistry)]
    shared = [r for r in registries if not getattr(getattr(r, "capabilities", None), "in_process", False)]
    found = shared or registries
    return found[0] if found else None


async def live_workers(registry: WorkerRegistry) -> list[WorkerInfo]:
    """The workers whose last heartbeat has not expired, by name; records that cannot be read
    (another program's) are skipped."""
    workers = []
    for data in await registry.list_workers():
        try:
            workers.append(WorkerInfo.model_validate_json(data))
        except ValidationError:
            logger.debug("skipping a worker record that is not a WorkerInfo: %r", data[:200])
    return sorted(workers, key=lambda w: (w.name, w.host, w.pid))


class Heartbeat:
    """The background service that keeps one worker's record fresh (see the module doc)."""

    def __init__(
        self, worker: WorkerView, registry: WorkerRegistry, interval: float = HEARTBEAT_INTERVAL
    ) -> None:
        if interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        self.worker = worker
        self.registry = registry
        self.interval = interval
        self.started_at = datetime.now(UTC)
        self.host = socket.gethostname()

    def info(self) -> WorkerInfo:
        from . import __version__  # the package imports this module while it initialises

        worker = self.worker
        counts = worker.runner.counts
        return WorkerInfo(
            name=worker.tag,
            host=self.host,
            pid=os.getpid(),
            queues=[worker.queue],
            concurrency=worker.concurrency,
            running=worker.running_tasks,
            processed=counts.processed,
            failed=counts.failed,
            retried=counts.retried,
            started_at=self.started_at,
            seen_at=datetime.now(UTC),
            timeout=self.interval * MISSED_BEATS,
            version=__version__,
            broker=worker.broker.describe(),
            recent_failures=[
                FailureNote(at=datetime.fromtimestamp(at, UTC), uuid=uuid, name=name, error=error)
                for at, uuid, name, error in counts.recent_failures
            ],
        )

    async def beat(self) -> None:
        """Write the record once."""
        info = self.info()
        await self.registry.record_worker(
            info.key, info.model_dump_json().encode(), time.time() + info.timeout
        )

    async def run(self) -> None:
        self.started_at = datetime.now(UTC)
        key = self.info().key
        failing = False
        try:
            while True:
                try:
                    await self.beat()
                except Exception as exc:
                    if not failing:
                        logger.warning(
                            "worker %s: heartbeat failed: %s", self.worker.tag, mask_secrets(str(exc))
                        )
                    failing = True
                else:
                    failing = False
                await asyncio.sleep(self.interval)
        finally:
            try:
                await asyncio.wait_for(self.registry.remove_worker(key), self.interval)
            except (Exception, asyncio.CancelledError) as exc:
                logger.debug("worker %s: could not remove its heartbeat: %s", self.worker.tag, exc)
