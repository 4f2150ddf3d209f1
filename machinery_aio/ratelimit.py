"""Rate limits: ``@server.task("call_api", rate_limit="10/s")``.

A limited task's runs are spaced evenly: ``10/s`` lets one start every 0.1 s, so no
second ever sees more than about 10 (no burst at the start of a calendar second). Each
run asks a :class:`RateLimiter` for a start time (the generic cell rate algorithm: the
limiter keeps, per task name, the earliest time the next run may start, and moves it
on by one interval per run), and a run that must wait gets a reservation under its UUID.
A run due within :data:`LOCAL_WAIT` seconds waits in the worker without holding a
concurrency slot; one due later goes back to the broker with that delay. Either way it
asks again when due and starts if it is within half an interval of its reservation; a
run later than that (a busy worker, a broker that delivered late) has lost its turn and
gets a new one, so late runs never bunch up. Nothing polls. At most half a worker's
in-flight window waits in the worker (those messages stay unacknowledged), so other
tasks can still be fetched.

The Redis broker's limiter (one Lua script, Redis's clock) holds across every worker
sharing that Redis; elsewhere :class:`LocalRateLimiter` holds per worker process.
"""

from __future__ import annotations

import re
import time

from .drivers.ratelimit import Rate, RateLimiter

__all__ = ["LOCAL_WAIT", "LocalRateLimiter", "Rate", "RateLimiter", "parse_rate"]

LOCAL_WAIT = 0.5
"""A run due within this many seconds waits in the worker; a later one goes back to the broker."""

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*([a-z]+)\s*$")


def parse_rate(text: str) -> Rate:
    """``"10/s"``, ``"100/m"``, ``"1000/h"`` (also ``/sec``, ``/minute``, ``/hour``).

    Raises ValueError naming what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"rate_limit must be a string like '10/s', got {type(text).__name__}")
    match = _RATE.match(text.lower())
    if match is None:
        raise ValueError(f"rate_limit {text!r} is not a rate: use '<count>/s', '<count>/m' or '<count>/h'")
    count, unit = float(match.group(1)), match.group(2)
    if unit not in _UNITS:
        raise ValueError(f"rate_limit {text!r}: unknown unit {unit!r} (use s, m or h)")
    if count <= 0:
        raise ValueError(f"rate_limit {text!r}: the count must be more than 0")
    return Rate(count, _UNITS[unit], text.strip())


class LocalRateLimiter(RateLimiter):
    """A limiter within one process (brokers other than Redis: per worker)."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._reserved: dict[str, float] = {}

    async def acquire(self, name: str, rate: Rate, task_uuid: str) -> float:
        now = time.monotonic()
        reserved = self._reserved.pop(task_uuid, None)
        if reserved is not None:
            if reserved > now:
                self._reserved[task_uuid] = reserved
                return reserved - now
            if now - reserved <= rate.interval / 2:
                return 0.0
        at = max(self._next.get(name, now), now)
        self._next[name] = at + rate.interval
        if at > now:
            self._reserved[task_uuid] = at
        return at - now
