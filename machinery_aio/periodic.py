"""Periodic tasks, groups, chains and chords, sent exactly once per tick.

Every worker runs a :class:`Scheduler` by default (``machinery-aio beat`` runs
one alone). Any number of schedulers may run: at each tick they all try to take
the tick's lock, ``machinery_periodic:[<app_name>:]<name>:<tick unix seconds>``,
in the configured lock backend; the one that gets it sends a fresh copy of the
work (new UUIDs), the others do nothing. See docs/periodic.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .cron import Schedule, parse_schedule, zone_name
from .log import get_logger
from .signature import Signature, new_chord_uuid, new_task_uuid
from .workflow import Chain, Chord, Group

T = TypeVar("T")

if TYPE_CHECKING:
    from .drivers.lock import Lock
    from .publisher import Publisher

__all__ = [
    "PERIODIC_NAME_HEADER",
    "PERIODIC_TICK_HEADER",
    "MissedPolicy",
    "PeriodicEntry",
    "Scheduler",
    "run_beat",
]

logger = get_logger("machinery_aio.periodic")

MissedPolicy = Literal["skip", "once"]
"""What to do with a tick no scheduler could send in time: ``skip`` it, or send
the most recent such tick ``once`` as soon as a scheduler runs."""
Kind = Literal["task", "group", "chain", "chord"]
Work = Signature | Group | Chain | Chord

PERIODIC_NAME_HEADER = "machinery_periodic"
"""Header set on every signature a schedule sends: the entry's name."""
PERIODIC_TICK_HEADER = "machinery_periodic_tick"
"""Header set on every signature a schedule sends: the tick, RFC 3339 in UTC."""

MAX_SLEEP = 60.0
"""Longest single sleep; the wall clock is re-read after it, so clock jumps are noticed."""
GO_LOCK_RETRY_INTERVAL = 0.05


def _now() -> datetime:
    return datetime.now(UTC)


def format_tick(tick: datetime) -> str:
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _renew(sig: Signature, uuid: str) -> None:
    """Give ``sig`` and every callback nested in it new UUIDs."""
    sig.uuid = uuid
    for callback in (*(sig.on_success or ()), *(sig.on_error or ())):
        _renew(callback, new_task_uuid())
    if sig.chord_callback is not None:
        _renew(sig.chord_callback, new_chord_uuid())


def _signatures(items: tuple[Any, ...], what: str) -> list[Signature]:
    if len(items) == 1 and isinstance(items[0], Group | Chain):
        items = tuple(items[0].tasks)
    elif len(items) == 1 and not isinstance(items[0], Signature) and isinstance(items[0], Iterable):
        items = tuple(items[0])
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            raise TypeError(
                f"{what} takes Signatures, got the number {item}; unlike Go, "
                "send_concurrency is a keyword argument here (send_concurrency=...)"
            )
        if not isinstance(item, Signature):
            raise TypeError(f"{what} takes Signatures, got {type(item).__name__}")
        if not item.name:
            raise ValueError(f"{what}: every Signature needs a task name")
    if not items:
        raise ValueError(f"{what} needs at least one Signature")
    return [sig.copy_fresh() for sig in items]


@dataclass(eq=False)
class PeriodicEntry:
    """One registered schedule and the work it sends (kept as a private copy)."""

    name: str
    spec: str
    kind: Kind
    schedule: Schedule
    tasks: list[Signature]
    callback: Signature | None = None
    send_concurrency: int = 0
    missed: MissedPolicy = "skip"

    @classmethod
    def create(
        cls,
        kind: Kind,
        spec: str,
        name: str,
        tasks: tuple[Any, ...],
        *,
        callback: Signature | None = None,
        send_concurrency: int = 0,
        timezone: str | tzinfo | None = None,
        missed: MissedPolicy = "skip",
    ) -> PeriodicEntry:
        """Validate everything now, so a bad registration fails at once and clearly."""
        what = f"register_periodic_{kind}"
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{what}: the name must be a non-empty string, got {name!r}")
        schedule = parse_schedule(spec, timezone)
        if missed not in ("skip", "once"):
            raise ValueError(f"{what} {name!r}: missed must be 'skip' or 'once', got {missed!r}")
        if (
            not isinstance(send_concurrency, int)
            or isinstance(send_concurrency, bool)
            or send_concurrency < 0
        ):
            raise ValueError(f"{what} {name!r}: send_concurrency must be 0 (unlimited) or more")
        sigs = _signatures(tasks, f"{what} {name!r}")
        if kind == "task" and len(sigs) != 1:
            raise ValueError(f"{what} {name!r} takes one Signature, got {len(sigs)}")
        if kind == "chord":
            if not isinstance(callback, Signature):
                raise TypeError(
                    f"{what} {name!r}: the callback must be a Signature, got {type(callback).__name__}"
                )
            if not callback.name:
                raise ValueError(f"{what} {name!r}: the callback needs a task name")
            callback = callback.copy_fresh()
        entry = cls(name, spec, kind, schedule, sigs, callback, send_concurrency, missed)
        entry.build(_now())
        return entry

    def build(self, tick: datetime) -> Work:
        """A fresh copy of the work for ``tick``: new task, group and chord UUIDs."""
        headers = {PERIODIC_NAME_HEADER: self.name, PERIODIC_TICK_HEADER: format_tick(tick)}

        def fresh(sig: Signature, uuid: str) -> Signature:
            copy = sig.copy_fresh()
            _renew(copy, uuid)
            copy.headers = {**(copy.headers or {}), **headers}
            return copy

        copies = [fresh(sig, new_task_uuid()) for sig in self.tasks]
        if self.kind == "task":
            return copies[0]
        if self.kind == "group":
            return Group(*copies)
        if self.kind == "chain":
            return Chain(*copies)
        assert self.callback is not None
        return Chord(Group(*copies), fresh(self.callback, new_chord_uuid()))

    def task_names(self) -> list[str]:
        names = [sig.name for sig in self.tasks]
        return [*names, self.callback.name] if self.callback is not None else names


class Scheduler:
    """Sends every registered entry on its schedule, once per tick across all schedulers.

    Args:
        publisher: sends each tick's work.
        lock: one lock per tick keeps a tick single across schedulers.
        app_name: part of the lock keys (Go uses the basename of ``argv[0]``).
        go_compatible: also take Go Machinery's lock key, so Go schedulers of the
            same app stay out.
        clock_skew: the largest difference, in seconds, between the clocks of
            the hosts running schedulers. Tick locks live long enough to cover it.
        misfire_grace: how late, in seconds, a tick may still be sent (the loop
            was busy, the process started or resumed just after the tick).
        stop_timeout: on stop, how long sends in progress may take to finish.
    """

    def __init__(
        self,
        publisher: Publisher,
        lock: Lock,
        *,
        app_name: str = "",
        go_compatible: bool = True,
        clock_skew: float = 5.0,
        misfire_grace: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if clock_skew < 0 or misfire_grace < 0 or stop_timeout < 0:
            raise ValueError("clock_skew, misfire_grace and stop_timeout must not be negative")
        self.publisher = publisher
        self.lock = lock
        self.app_name = app_name
        self.go_compatible = go_compatible
        self.clock_skew = clock_skew
        self.misfire_grace = misfire_grace
        self.stop_timeout = stop_timeout
        self.entries: dict[str, PeriodicEntry] = {}
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.started = asyncio.Event()
        """Set while :meth:`run` is running (after the start-up ticks were considered)."""
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._sending: set[asyncio.Task[bool]] = set()
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()

    # -- registration --------------------------------------------------------------

    def register(self, entry: PeriodicEntry) -> PeriodicEntry:
        """Add ``entry``; one with the same name is replaced."""
        old = self._loops.pop(entry.name, None)
        if old is not None:
            old.cancel()
        if entry.name in self.entries:
            logger.info("periodic %r: replacing the earlier registration", entry.name)
        self.entries[entry.name] = entry
        if self._running:
            self._start(entry, _now())
        return entry

    # -- lock keys -----------------------------------------------------------------

    def tick_key(self, entry: PeriodicEntry, tick: datetime) -> str:
        """``machinery_periodic:[<app_name>:]<name>:<tick unix seconds>``."""
        app = self.app_name
        prefix = f"machinery_periodic:{app}:" if app else "machinery_periodic:"
        return f"{prefix}{entry.name}:{int(tick.timestamp())}"

    def go_key(self, entry: PeriodicEntry) -> str:
        """Go's key: ``machinery_lock_`` + app name (Go: basename of argv[0]) + name + spec."""
        app = self.app_name or os.path.basename(sys.argv[0])
        return f"machinery_lock_{app}{entry.name}{entry.spec}"

    # -- running -------------------------------------------------------------------

    async def run(self) -> None:
        """Schedule every entry until cancelled; then let sends in progress finish
        within ``stop_timeout`` (a second cancel stops them at once)."""
        while self._running:
            # Another worker of this server runs it; take over when that one stops.
            await self._idle.wait()
        self._running = True
        self._idle.clear()
        try:
            lock = self.lock
            now = _now()
            for entry in list(self.entries.values()):
                self._start(entry, now)
            if self.entries:
                logger.info(
                    "scheduler running %d periodic entries (locks in %s)", len(self.entries), lock.describe()
                )
                if lock.capabilities.in_process and not self.publisher.broker.capabilities.in_process:
                    logger.warning(
                        "periodic tasks use the in-memory lock, which keeps ticks single "
                        "only within this process; with several worker or beat "
                        "processes set the lock to a Redis URL (config.lock)"
                    )
            self.started.set()
            await asyncio.get_running_loop().create_future()
        finally:
            self.started.clear()
            loops = list(self._loops.values())
            self._loops.clear()
            for loop_task in loops:
                loop_task.cancel()
            try:
                await asyncio.gather(*loops, return_exceptions=True)
                await self._finish_sends()
            finally:
                for task in list(self._sending):
                    task.cancel()
                self._running = False
                self._idle.set()

    async def _finish_sends(self) -> None:
        if not self._sending:
            return
        logger.info(
            "waiting up to %g s for %d periodic sends in progress", self.stop_timeout, len(self._sending)
        )
        _, pending = await asyncio.wait(set(self._sending), timeout=self.stop_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def join_sends(self) -> None:
        """Wait until the sends in progress are done."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _start(self, entry: PeriodicEntry, now: datetime) -> None:
        latest = entry.schedule.latest_at_or_before(now)
        if latest is not None:
            self._consider(entry, latest, now, starting=True)
        self._loops[entry.name] = asyncio.create_task(self._loop(entry, now), name=f"periodic-{entry.name}")

    async def _loop(self, entry: PeriodicEntry, start: datetime) -> None:
        schedule = entry.schedule
        moment = start
        while True:
            try:
                tick = schedule.next_after(moment)
                await _sleep_until(tick)
                now = _now()
                latest = max(tick, schedule.latest_at_or_before(now) or tick)
                if latest > tick:
                    logger.warning(
                        "periodic %r: the scheduler woke up at %s, after more than one "
                        "tick; ticks from %s to before %s were not sent",
                        entry.name,
                        format_tick(now),
                        format_tick(tick),
                        format_tick(latest),
                    )
                self._consider(entry, latest, now)
                moment = latest
            except Exception:
                logger.exception(
                    "periodic %r: scheduling failed; trying again in %g s", entry.name, MAX_SLEEP
                )
                await asyncio.sleep(MAX_SLEEP)
                moment = _now()

    def due(self, entry: PeriodicEntry, tick: datetime, now: datetime) -> datetime | None:
        """The deadline to send ``tick`` by, seen at ``now``; None if it is not to be sent.

        A tick is sent if it is at most ``misfire_grace`` late; a later one only
        with ``missed="once"`` (it is then the most recent missed tick).
        """
        late = (now - tick).total_seconds()
        if late <= self.misfire_grace:
            return tick + timedelta(seconds=self.misfire_grace)
        if entry.missed == "once":
            return now + timedelta(seconds=self.misfire_grace)
        return None

    def _consider(
        self, entry: PeriodicEntry, tick: datetime, now: datetime, *, starting: bool = False
    ) -> None:
        deadline = self.due(entry, tick, now)
        late = (now - tick).total_seconds()
        if deadline is None:
            if starting:
                logger.debug(
                    "periodic %r: not sending %s, missed before the scheduler started",
                    entry.name,
                    format_tick(tick),
                )
            else:
                logger.warning(
                    "periodic %r: tick %s missed (%.0f s late, misfire_grace is %g s)",
                    entry.name,
                    format_tick(tick),
                    late,
                    self.misfire_grace,
                )
            return
        if late > self.misfire_grace:
            logger.info(
                "periodic %r: sending the missed tick %s once (%.0f s late)",
                entry.name,
                format_tick(tick),
                late,
            )
        task = asyncio.create_task(self._fire_logged(entry, tick, deadline))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # -- one tick ------------------------------------------------------------------

    async def _fire_logged(self, entry: PeriodicEntry, tick: datetime, deadline: datetime) -> bool:
        try:
            return await self.fire(entry, tick, deadline=deadline)
        except Exception:
            logger.exception("periodic %r: tick %s not sent", entry.name, format_tick(tick))
            return False

    async def fire(self, entry: PeriodicEntry, tick: datetime, *, deadline: datetime | None = None) -> bool:
        """Send ``entry`` for ``tick`` unless another scheduler has; True if this one sent it.

        Lock and broker errors are retried until ``deadline`` (default: the tick
        plus ``misfire_grace``), then logged; they never stop the scheduler.
        """
        if deadline is None:
            deadline = max(tick, _now()) + timedelta(seconds=self.misfire_grace)
        next_tick = entry.schedule.next_after(tick)
        key = self.tick_key(entry, tick)
        margin = 2 * self.clock_skew + self.misfire_grace
        ttl = max(margin, (next_tick - _now()).total_seconds() + margin)
        if not await self._acquire(entry, tick, key, ttl, deadline):
            return False
        if self.go_compatible and not await self._take_go_lock(entry, tick, next_tick):
            return False
        return await self._send(entry, entry.build(tick), tick, deadline)

    async def _acquire(
        self, entry: PeriodicEntry, tick: datetime, key: str, ttl: float, deadline: datetime
    ) -> bool:
        lock = self.lock

        def failed(exc: Exception, delay: float | None) -> None:
            if delay is None:
                logger.error(
                    "periodic %r: tick %s not sent: the lock %s failed: %s",
                    entry.name,
                    format_tick(tick),
                    lock.describe(),
                    exc,
                )
            else:
                logger.warning(
                    "periodic %r: the lock %s failed: %s; retrying in %.1f s",
                    entry.name,
                    lock.describe(),
                    exc,
                    delay,
                )

        ok, token = await _retry_until(deadline, 0.2, lambda: lock.acquire(key, ttl, self.identity), failed)
        if ok and token is None:
            logger.debug("periodic %r: tick %s is another scheduler's", entry.name, format_tick(tick))
        return ok and token is not None

    async def _take_go_lock(self, entry: PeriodicEntry, tick: datetime, next_tick: datetime) -> bool:
        """Take Go Machinery's lock for this period, so a Go scheduler of the same app stays out.

        Go holds ``machinery_lock_<app><name><spec>`` from a tick until just before
        the next one (value: next tick in ns minus 1). The previous period's holder
        may keep it a moment past our tick (clock skew, network latency), so we
        retry for up to ``clock_skew`` (at most half the period); a key still held
        then is a Go scheduler's for this tick.
        """
        key = self.go_key(entry)
        next_ns = int(next_tick.timestamp()) * 1_000_000_000
        window = min(self.clock_skew, (next_tick - tick).total_seconds() / 2)
        give_up = tick + timedelta(seconds=window)
        while True:
            ttl = (next_ns - _now_ns()) / 1e9
            if ttl <= 0:
                logger.warning(
                    "periodic %r: tick %s not sent: its period ended before Go's lock could be taken",
                    entry.name,
                    format_tick(tick),
                )
                return False
            try:
                if await self.lock.acquire(key, ttl, str(next_ns - 1)) is not None:
                    return True
                failure = "it is held (a Go scheduler of this app sent this tick)"
            except Exception as exc:
                failure = f"the lock failed: {exc}"
                if _now() >= give_up:
                    # Our own tick lock is held, so no Python scheduler sends it twice.
                    logger.error(
                        "periodic %r: could not take Go's lock %r (%s); sending anyway",
                        entry.name,
                        key,
                        failure,
                    )
                    return True
            if _now() >= give_up:
                logger.info(
                    "periodic %r: tick %s not sent: Go's lock %r: %s",
                    entry.name,
                    format_tick(tick),
                    key,
                    failure,
                )
                return False
            await asyncio.sleep(GO_LOCK_RETRY_INTERVAL)

    async def _send(self, entry: PeriodicEntry, work: Work, tick: datetime, deadline: datetime) -> bool:
        def failed(exc: Exception, delay: float | None) -> None:
            if delay is None:
                logger.error("periodic %r: tick %s not sent: %s", entry.name, format_tick(tick), exc)
            else:
                logger.warning(
                    "periodic %r: sending tick %s failed: %s; retrying in %.1f s",
                    entry.name,
                    format_tick(tick),
                    exc,
                    delay,
                )

        ok, sent = await _retry_until(deadline, 0.5, lambda: self._send_once(entry, work), failed)
        if ok:
            logger.info(
                "periodic %r: sent %s %s for tick %s", entry.name, entry.kind, sent, format_tick(tick)
            )
        return ok

    async def _send_once(self, entry: PeriodicEntry, work: Work) -> str:
        """Send the tick's work; return the UUID it went out under."""
        publisher = self.publisher
        if isinstance(work, Signature):
            await publisher.send_task(work)
            return work.uuid
        if isinstance(work, Group):
            await publisher.send_group(work, entry.send_concurrency)
            return work.group_uuid
        if isinstance(work, Chord):
            await publisher.send_chord(work, entry.send_concurrency)
            return work.group.group_uuid
        await publisher.send_chain(work)
        return work.tasks[0].uuid

    # -- inspection ----------------------------------------------------------------

    def describe(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The schedules and their next run times (``machinery-aio inspect periodic``)."""
        now = now or _now()
        rows = []
        for entry in sorted(self.entries.values(), key=lambda e: e.name):
            zone = entry.schedule.timezone
            upcoming = entry.schedule.next_after(now)
            rows.append(
                {
                    "name": entry.name,
                    "type": entry.kind,
                    "spec": entry.spec,
                    "timezone": zone_name(zone),
                    "next_run": upcoming.astimezone(zone).isoformat(),
                    "next_run_utc": format_tick(upcoming),
                    "tasks": entry.task_names(),
                    "missed": entry.missed,
                    "lock_key": self.tick_key(entry, upcoming),
                }
            )
        return rows


async def _retry_until(
    deadline: datetime,
    delay: float,
    attempt: Callable[[], Awaitable[T]],
    failed: Callable[[Exception, float | None], None],
) -> tuple[bool, T | None]:
    """``(True, result)`` of the first ``attempt`` that does not raise, retried with a
    doubling pause (up to 5 s) until the next retry would pass ``deadline``: then
    ``(False, None)``. ``failed(exc, pause)`` reports each error; the pause is None for the
    last one."""
    while True:
        try:
            return True, await attempt()
        except Exception as exc:
            if _now() + timedelta(seconds=delay) > deadline:
                failed(exc, None)
                return False, None
            failed(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _now_ns() -> int:
    return time.time_ns()


async def _sleep_until(moment: datetime) -> None:
    """Sleep until the wall clock reaches ``moment``.

    The event loop sleeps on a monotonic clock, which drifts from the wall clock
    (NTP slewing, suspend, clock steps), so the wall clock is re-read after each
    sleep of at most :data:`MAX_SLEEP` seconds.
    """
    while True:
        remaining = (moment - _now()).total_seconds()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, MAX_SLEEP))


async def run_beat(scheduler: Scheduler, *, handle_signals: bool = True) -> None:
    """Run only the scheduler until SIGTERM/SIGINT (``machinery-aio beat``).

    The first signal stops scheduling and lets sends in progress finish; a
    second one stops at once.
    """
    await scheduler.publisher.connect()
    task = asyncio.create_task(scheduler.run(), name="beat")
    loop = asyncio.get_running_loop()
    signals: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        signals.append(sig)
        if len(signals) == 1:
            logger.info("%s: stopping the scheduler (send it again to stop at once)", sig.name)
        else:
            logger.warning("second %s: stopping at once", sig.name)
        task.cancel()

    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
    try:
        await task
    except asyncio.CancelledError:
        if not signals:
            raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    logger.info("scheduler stopped")
