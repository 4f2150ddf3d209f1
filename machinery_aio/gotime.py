"""Go's RFC 3339 timestamps, with nanoseconds, as aware datetimes.

Go writes times such as ``2025-01-15T10:30:00.123456789Z``: up to nine
fractional digits with trailing zeros trimmed, and ``Z`` for a zero offset.
Python's datetime stops at microseconds, so :class:`NanoTime` (a datetime
subclass) carries the last three digits, and a message read from Go is written
back byte for byte.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

__all__ = ["ZERO_TIME", "NanoTime", "coerce_time", "format_time", "now", "parse_time", "unix_nanos"]

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class NanoTime(datetime):
    """An aware datetime that remembers the nanoseconds below its microseconds."""

    __slots__ = ("_text", "nanosecond")
    nanosecond: int
    _text: str
    """The formatted time, kept after the first format (a PENDING time is written often)."""

    def __new__(cls, *args: Any, nanosecond: int = 0, **kwargs: Any) -> NanoTime:
        self = super().__new__(cls, *args, **kwargs)
        self.nanosecond = nanosecond
        return self

    def __reduce__(self) -> Any:
        tz = self.tzinfo
        fields = (self.year, self.month, self.day, self.hour, self.minute, self.second)
        return (_rebuild, (fields, self.microsecond, tz, self.nanosecond))

    def __reduce_ex__(self, protocol: Any) -> Any:
        # datetime's own __reduce_ex__ would drop the nanoseconds (copy, deepcopy, pickle).
        return self.__reduce__()

    def __repr__(self) -> str:
        return f"NanoTime({format_time(self)!r})"


def _rebuild(fields: tuple[int, ...], micro: int, tz: Any, nano: int) -> NanoTime:
    return NanoTime(*fields, micro, tzinfo=tz, nanosecond=nano)


ZERO_TIME = NanoTime(1, 1, 1, tzinfo=UTC)
"""Go's zero ``time.Time``, written ``0001-01-01T00:00:00Z``."""
_ZERO_TEXT = "0001-01-01T00:00:00Z"


def now() -> NanoTime:
    """The current UTC time with nanoseconds, as Go's ``time.Now().UTC()``."""
    ns = time.time_ns()
    secs, rest = divmod(ns, 1_000_000_000)
    micro, nano = divmod(rest, 1000)
    base = datetime.fromtimestamp(secs, UTC)
    return NanoTime(
        base.year,
        base.month,
        base.day,
        base.hour,
        base.minute,
        base.second,
        micro,
        tzinfo=UTC,
        nanosecond=nano,
    )


def parse_time(text: str) -> NanoTime:
    """Parse an RFC 3339 timestamp with a zone; a timestamp without one is rejected."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time with a zone: {text!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    digits = (frac or "").ljust(9, "0")
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        tz = UTC if not offset else timezone(sign * offset)
    return NanoTime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        int(digits[:6]),
        tzinfo=tz,
        nanosecond=int(digits[6:]),
    )


def format_time(value: datetime) -> str:
    """Format as Go's ``time.RFC3339Nano``: trimmed fraction, ``Z`` for UTC."""
    if value is ZERO_TIME:
        return _ZERO_TEXT
    text: str | None = getattr(value, "_text", None)
    if text is not None:
        return text
    text = _format(value)
    if isinstance(value, NanoTime):
        value._text = text
    return text


def _format(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("times on the wire must be timezone-aware")
    nanos = value.microsecond * 1000 + getattr(value, "nanosecond", 0)
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
    text += f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    offset = value.utcoffset()
    assert offset is not None
    if not offset:
        return text + "Z"
    total = int(offset.total_seconds()) // 60
    sign = "+" if total >= 0 else "-"
    hours, minutes = divmod(abs(total), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def unix_nanos(value: datetime) -> int:
    """Nanoseconds since the Unix epoch, as Go's ``Time.UnixNano()``."""
    delta = value - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 1000 + getattr(value, "nanosecond", 0)


def coerce_time(value: Any) -> NanoTime:
    """Accept a NanoTime, an aware datetime or an RFC 3339 string."""
    if isinstance(value, NanoTime):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("ETA and other times must be timezone-aware datetimes")
        return NanoTime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=value.tzinfo,
        )
    if isinstance(value, str):
        return parse_time(value)
    raise ValueError(f"expected an aware datetime or an RFC 3339 string, got {type(value).__name__}")
