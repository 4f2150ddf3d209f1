"""What the dashboard shows, read through the same driver interfaces as ``machinery-aio inspect``.

Every read is bounded: one overview costs, per queue, a count of its ready messages and one
of its dead letters, plus one delayed listing of at most :data:`LIST_LIMIT` and one worker
registry read, whatever the queues hold; a snapshot is reused for :data:`CACHE_SECONDS`,
so many open pages cost no more than one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..drivers.broker import DeadLetter
from ..heartbeat import WorkerInfo, live_workers, registry_of
from ..server import Server
from ..signature import InvalidMessageError, Signature
from ..state import GroupMeta, TaskState

__all__ = ["Count", "Overview", "QueueRow", "Reader", "TaskView"]

LIST_LIMIT = 500
"""At most this many delayed tasks (per refresh), or dead letters (per page), are read; more
delayed tasks show as 500+."""
CACHE_SECONDS = 1.0
HISTORY_SECONDS = 600.0
"""How far back the throughput chart goes."""
GROUP_LIMIT = 200
"""At most this many group members' states are read for a task page."""


@dataclass(frozen=True, slots=True)
class Count:
    """A count that may be a lower bound (``at_least``) or unknown (``value`` None)."""

    value: int | None
    at_least: bool = False

    def __str__(self) -> str:
        if self.value is None:
            return "—"
        return f"{self.value}+" if self.at_least else str(self.value)


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    ready: Count
    delayed: Count
    in_progress: Count
    dead: Count


@dataclass(slots=True)
class Overview:
    queues: list[QueueRow]
    workers: list[WorkerInfo]
    has_registry: bool
    rates: list[tuple[float, float, float]]
    """(Unix time, tasks finished per second, failures per second), oldest first."""
    taken_at: float

    def as_json(self) -> dict[str, Any]:
        """The live-update payload (plain values; the page puts them in as text)."""
        return {
            "queues": [
                {
                    "name": q.name,
                    "ready": str(q.ready),
                    "delayed": str(q.delayed),
                    "in_progress": str(q.in_progress),
                    "dead": str(q.dead),
                }
                for q in self.queues
            ],
            "workers": [worker_row(w) for w in self.workers],
            "rates": [[round(t, 3), round(r, 3), round(f, 3)] for t, r, f in self.rates],
            "taken_at": datetime.fromtimestamp(self.taken_at, UTC).isoformat(timespec="seconds"),
        }


def worker_row(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "name": worker.name,
        "host": worker.host,
        "pid": worker.pid,
        "queues": ", ".join(worker.queues),
        "concurrency": worker.concurrency or "unlimited",
        "running": worker.running,
        "processed": worker.processed,
        "failed": worker.failed,
        "seen_at": worker.seen_at.astimezone(UTC).isoformat(timespec="seconds"),
    }


@dataclass(slots=True)
class TaskView:
    """A task page: the stored state, and the group's members when it is a group UUID."""

    uuid: str
    state: TaskState | None
    group: GroupMeta | None = None
    members: list[tuple[str, TaskState | None]] = field(default_factory=list)
    more_members: int = 0
    message: Signature | None = None
    """The task's message, while the broker still holds it (waiting, running, dead)."""
    where: str = ""
    """Where the message was found: ``ready in q``, ``delayed``, ``taken from q``, ``a dead letter of q``."""


class Reader:
    """Reads a server's queues, workers and tasks for the dashboard (one per app)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._connected = False
        self._connect_lock = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()
        self._snapshot: Overview | None = None
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    async def connect(self) -> None:
        """Connect the server on first use (a host app need not start it)."""
        if self._connected:
            return
        async with self._connect_lock:
            if not self._connected:
                await self.server.connect()
                self._connected = True

    # -- overview ------------------------------------------------------------------------

    def queue_names(self, workers: Sequence[WorkerInfo] = ()) -> list[str]:
        """The default queue, the queues of periodic tasks and those live workers consume."""
        names = {self.server.config.default_queue}
        scheduler = self.server.scheduler
        for entry in scheduler.entries.values():
            names.update(sig.routing_key for sig in entry.tasks if sig.routing_key)
        for worker in workers:
            names.update(worker.queues)
        default = self.server.config.default_queue
        return [default, *sorted(names - {default})]

    async def overview(self) -> Overview:
        """The overview, at most :data:`CACHE_SECONDS` old."""
        async with self._snapshot_lock:
            now = time.time()
            if self._snapshot is not None and now - self._snapshot.taken_at < CACHE_SECONDS:
                return self._snapshot
            await self.connect()
            self._snapshot = await self._read_overview(now)
            return self._snapshot

    async def _read_overview(self, now: float) -> Overview:
        broker = self.server.broker
        registry = registry_of(self.server.backend, broker)
        workers = await live_workers(registry) if registry is not None else []
        names = self.queue_names(workers)
        delayed = await self._delayed_by_queue()
        rows = []
        for name, (ready, dead) in zip(
            names, await asyncio.gather(*(self._queue_counts(n) for n in names)), strict=True
        ):
            running = sum(w.running for w in workers if name in w.queues)
            rows.append(
                QueueRow(
                    name=name,
                    ready=ready,
                    delayed=delayed(name),
                    in_progress=Count(running if registry is not None else None),
                    dead=dead,
                )
            )
        self._sample(now, workers)
        return Overview(rows, workers, registry is not None, self._rates(), now)

    async def _queue_counts(self, queue: str) -> tuple[Count, Count]:
        broker = self.server.broker
        ready = Count(await broker.count_pending(queue))
        if not broker.capabilities.dead_letters:
            return ready, Count(None)
        return ready, Count(await broker.count_dead_letters(queue))

    async def _delayed_by_queue(self) -> Any:
        broker = self.server.broker
        if not broker.capabilities.list_delayed:
            return lambda name: Count(None)
        tasks = await broker.get_delayed_tasks(LIST_LIMIT)
        full = len(tasks) >= LIST_LIMIT
        default = self.server.config.default_queue
        counts: dict[str, int] = {}
        for sig in tasks:
            key = sig.routing_key or default
            counts[key] = counts.get(key, 0) + 1
        return lambda name: Count(counts.get(name, 0), full)

    def _sample(self, now: float, workers: list[WorkerInfo]) -> None:
        self._samples.append((now, {w.key: (w.processed, w.failed) for w in workers}))
        while self._samples and self._samples[0][0] < now - HISTORY_SECONDS:
            self._samples.popleft()

    def _rates(self) -> list[tuple[float, float, float]]:
        """Finished and failed runs per second between consecutive samples, from the
        workers' heartbeat counters (a worker seen in only one of two samples counts 0)."""
        rates = []
        samples = list(self._samples)
        for (t0, before), (t1, after) in itertools.pairwise(samples):
            if t1 <= t0:
                continue
            done = failed = 0
            for key, (processed, fails) in after.items():
                if key in before:
                    done += max(0, processed - before[key][0])
                    failed += max(0, fails - before[key][1])
            rates.append((t1, done / (t1 - t0), failed / (t1 - t0)))
        return rates

    # -- tasks ---------------------------------------------------------------------------

    async def task(self, uuid: str) -> TaskView:
        """The task's state; for a group UUID, the group's members and their states."""
        await self.connect()
        backend = self.server.backend
        state, group = await asyncio.gather(backend.get_state(uuid), backend.get_group_meta(uuid))
        if group is None or (state is not None and state.task_uuid):
            view = TaskView(uuid, state)
            if state is None or not state.is_success():
                found = await self._find_message(uuid)
                if found is not None:
                    view.where, view.message = found
            return view
        members = group.task_uuids[:GROUP_LIMIT]
        return TaskView(
            uuid,
            None,
            group,
            list(zip(members, await backend.get_states(members), strict=True)),
            len(group.task_uuids) - len(members),
        )

    async def _find_message(self, uuid: str) -> tuple[str, Signature] | None:
        """The task's message where the broker can list it: among the first :data:`LIST_LIMIT`
        waiting, delayed, taken and dead messages of each known queue (a bounded search)."""
        broker = self.server.broker
        caps = broker.capabilities
        queues = self.queue_names()
        for queue in queues:
            if caps.list_pending:
                for sig in await broker.get_pending_tasks(queue, LIST_LIMIT):
                    if sig.uuid == uuid:
                        return f"ready in {queue}", sig
        if caps.list_delayed:
            for sig in await broker.get_delayed_tasks(LIST_LIMIT):
                if sig.uuid == uuid:
                    return "delayed", sig
        for queue in queues:
            for sig in await broker.get_held_tasks(queue, LIST_LIMIT):
                if sig.uuid == uuid:
                    return f"taken from {queue} by a worker", sig
            if caps.dead_letters:
                for letter in await broker.get_dead_letters(queue, LIST_LIMIT):
                    dead = signature_of(letter)
                    if dead is not None and dead.uuid == uuid:
                        return f"a dead letter of {queue}: {letter.reason}", dead
        return None

    def recent_failures(self, workers: list[WorkerInfo]) -> list[dict[str, Any]]:
        """The last failures the live workers reported in their heartbeats, newest first."""
        rows = [{"worker": w.name, **failure.model_dump()} for w in workers for failure in w.recent_failures]
        return sorted(rows, key=lambda r: r["at"], reverse=True)

    # -- dead letters --------------------------------------------------------------------

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        await self.connect()
        if not self.server.broker.capabilities.dead_letters:
            return []
        return await self.server.broker.get_dead_letters(queue, LIST_LIMIT)

    async def find_dead_letter(self, queue: str, letter_id: str) -> DeadLetter | None:
        for letter in await self.dead_letters(queue):
            if dead_letter_id(letter) == letter_id:
                return letter
        return None

    # -- periodic --------------------------------------------------------------------------

    def periodic(self) -> list[dict[str, Any]]:
        """Each schedule with its next run and its latest tick (due at or before now)."""
        scheduler = self.server.scheduler
        rows = scheduler.describe()
        now = datetime.now(UTC)
        for row in rows:
            entry = scheduler.entries[row["name"]]
            last = entry.schedule.latest_at_or_before(now)
            row["last_tick"] = last.astimezone(entry.schedule.timezone).isoformat() if last else ""
        return rows


def dead_letter_id(letter: DeadLetter) -> str:
    """A stable id for a dead letter (its content), to name it in a form."""
    import hashlib

    return hashlib.sha256(letter.model_dump_json().encode()).hexdigest()[:24]


def signature_of(letter: DeadLetter) -> Signature | None:
    """The dead letter's body as a Signature, if it is one."""
    try:
        return Signature.from_json(letter.body)
    except InvalidMessageError:
        return None
