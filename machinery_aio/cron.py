"""Cron specs as Go's robfig/cron reads them, computed with croniter.

Accepted specs (the same grammar as robfig/cron v3 with an optional seconds field):

* 5 fields: ``minute hour day-of-month month day-of-week`` (Go's ``ParseStandard``);
* 6 fields: ``second minute hour day-of-month month day-of-week``. The seconds
  field comes **first**, as with robfig's ``cron.WithSeconds()`` (and Quartz or
  Spring), so a Go service and a Python one can share a 6-field spec;
* descriptors ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``,
  ``@daily`` (``@midnight``), ``@hourly`` and ``@every <Go duration>``;
* an optional ``CRON_TZ=<zone>`` (or ``TZ=<zone>``) prefix.

Fields take ``*``, ``?``, numbers, ``a-b`` ranges, ``/step`` and ``,`` lists;
months and weekdays also take names (``JAN``, ``mon-fri``). Syntax robfig does
not accept (``L``, ``W``, ``#``, ``H``, a year field, weekday ``7``) is rejected,
so a spec that works here works in Go and means the same there.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

__all__ = [
    "CronSchedule",
    "EverySchedule",
    "InvalidScheduleError",
    "Schedule",
    "parse_go_duration",
    "parse_schedule",
    "resolve_timezone",
]

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    names_start: int = 0


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS, 1)
_DOW = _Field("day-of-week", 0, 6, _DAYS, 0)
_FIELDS_5 = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
_FIELDS_6 = (_SECOND, *_FIELDS_5)

_TOKEN = re.compile(r"^(?P<range>[^/]+)(?:/(?P<step>[^/]*))?$")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class InvalidScheduleError(ValueError):
    """A periodic spec or timezone that cannot be used; the message names it and says why."""


def resolve_timezone(zone: str | tzinfo | None) -> tzinfo:
    """An IANA zone name (``Europe/Paris``), a tzinfo, or None (UTC)."""
    if zone is None:
        return UTC
    if isinstance(zone, tzinfo):
        return zone
    if not isinstance(zone, str) or not zone.strip():
        raise InvalidScheduleError(f"timezone must be an IANA zone name such as 'UTC', got {zone!r}")
    name = zone.strip()
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"unknown timezone {name!r} (use an IANA name such as 'Europe/Paris' or 'UTC')"
        ) from None


def zone_name(zone: tzinfo) -> str:
    """``UTC``, ``Europe/Paris`` ... for display and for comparing zones."""
    if zone is UTC:
        return "UTC"
    key = getattr(zone, "key", None)
    return key if isinstance(key, str) else str(zone)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (``1h30m``, ``30s``, ``1.5h``, ``500ms``)."""
    raw = text.strip()
    negative = raw.startswith("-")
    body = raw[1:] if raw[:1] in ("+", "-") else raw
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"{text!r} is not a Go duration (e.g. 30s, 1h30m)")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise ValueError(f"{text!r} is not a Go duration (e.g. 30s, 1h30m, 500ms)")
    return -total if negative else total


class Schedule(ABC):
    """When a periodic entry fires: ticks are aware UTC datetimes on whole seconds."""

    spec: str
    timezone: tzinfo

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""

    @abstractmethod
    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last tick at or before ``moment`` (None if there is none)."""

    @abstractmethod
    def describe(self) -> str:
        """The spec in words, for ``inspect periodic``."""


class CronSchedule(Schedule):
    """A cron expression evaluated in a timezone (wall-clock fields, DST-aware).

    On a spring-forward day, times in the skipped hour run right after the jump;
    on a fall-back day, a wall-clock time that happens twice runs twice, as with
    Go's robfig/cron. Use UTC (the default) to have neither.
    """

    def __init__(self, spec: str, expression: str, with_seconds: bool, zone: tzinfo) -> None:
        self.spec = spec
        self.expression = expression
        self.with_seconds = with_seconds
        self.timezone = zone

    def _iter(self, start: datetime) -> croniter:
        return croniter(
            self.expression, start.astimezone(self.timezone), second_at_beginning=self.with_seconds
        )

    def next_after(self, moment: datetime) -> datetime:
        tick: datetime = self._iter(moment).get_next(datetime)
        return tick.astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        try:
            tick: datetime = self._iter(moment + timedelta(microseconds=1)).get_prev(datetime)
        except CroniterBadDateError:
            return None
        return tick.astimezone(UTC)

    def describe(self) -> str:
        return self.expression


class EverySchedule(Schedule):
    """``@every <duration>``: every ``interval`` seconds, aligned to the Unix epoch.

    robfig/cron counts ``@every`` from when each process started its scheduler,
    so two processes would tick at different moments; aligning ticks to the
    epoch (``@every 1h`` on the hour, ``@every 30s`` at :00 and :30) makes every
    scheduler agree on the ticks, which is what the per-tick lock needs.
    """

    def __init__(self, spec: str, interval: int) -> None:
        self.spec = spec
        self.interval = interval
        self.timezone = UTC

    def next_after(self, moment: datetime) -> datetime:
        step = math.floor(moment.timestamp() / self.interval) + 1
        return datetime.fromtimestamp(step * self.interval, UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        step = math.floor(moment.timestamp() / self.interval)
        return datetime.fromtimestamp(step * self.interval, UTC)

    def describe(self) -> str:
        return f"every {self.interval} s"


def parse_schedule(spec: str, timezone: str | tzinfo | None = None) -> Schedule:
    """Parse a spec; raise :class:`InvalidScheduleError` naming the spec and the problem.

    ``timezone`` (an IANA name or tzinfo; UTC if None) is where cron fields are
    read. A ``CRON_TZ=`` prefix in the spec sets it too; both may be given only
    if they agree.
    """
    if not isinstance(spec, str):
        raise InvalidScheduleError(f"a periodic spec must be a string, got {type(spec).__name__}")
    try:
        return _parse(spec, timezone)
    except InvalidScheduleError as exc:
        raise InvalidScheduleError(f"invalid periodic spec {spec!r}: {exc}") from None


def _parse(spec: str, timezone: str | tzinfo | None) -> Schedule:
    text = spec.strip()
    if not text:
        raise InvalidScheduleError("the spec is empty")
    zone = resolve_timezone(timezone)
    if text.startswith(("CRON_TZ=", "TZ=")):
        prefix, _, text = text.partition(" ")
        prefixed = resolve_timezone(prefix.split("=", 1)[1])
        if timezone is not None and zone_name(prefixed) != zone_name(zone):
            raise InvalidScheduleError(f"the spec says {prefix} but timezone={zone_name(zone)!r} was given")
        zone = prefixed
        text = text.strip()
        if not text:
            raise InvalidScheduleError("nothing follows the timezone prefix")
    if text.startswith("@"):
        return _parse_descriptor(spec, text, zone)
    fields = text.split()
    layout: tuple[_Field, ...]
    if len(fields) == 5:
        layout = _FIELDS_5
    elif len(fields) == 6:
        layout = _FIELDS_6
    else:
        raise InvalidScheduleError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 "
            f"(seconds first), got {len(fields)}"
        )
    normalized = [_check_field(value, field) for value, field in zip(fields, layout, strict=True)]
    return _cron(spec, " ".join(normalized), len(fields) == 6, zone)


def _parse_descriptor(spec: str, text: str, zone: tzinfo) -> Schedule:
    word, _, rest = text.partition(" ")
    word = word.lower()
    if word == "@every":
        if not rest.strip():
            raise InvalidScheduleError("@every needs a duration, e.g. '@every 30s' or '@every 1h30m'")
        try:
            seconds = parse_go_duration(rest)
        except ValueError as exc:
            raise InvalidScheduleError(str(exc)) from None
        if seconds <= 0:
            raise InvalidScheduleError(f"@every needs a positive duration, got {rest.strip()!r}")
        # robfig/cron: whole seconds, at least one.
        return EverySchedule(spec, max(1, math.floor(seconds + 1e-9)))
    if rest.strip():
        raise InvalidScheduleError(f"{word} takes no fields, got {rest.strip()!r}")
    expression = DESCRIPTORS.get(word)
    if expression is None:
        known = ", ".join([*DESCRIPTORS, "@every <duration>"])
        raise InvalidScheduleError(f"unknown descriptor {word!r}; known: {known}")
    return _cron(spec, expression, False, zone)


def _cron(spec: str, expression: str, with_seconds: bool, zone: tzinfo) -> CronSchedule:
    schedule = CronSchedule(spec, expression, with_seconds, zone)
    try:
        schedule.next_after(datetime.now(UTC))
    except CroniterBadDateError:
        raise InvalidScheduleError("it never matches a date (e.g. 30 February)") from None
    except CroniterError as exc:
        raise InvalidScheduleError(str(exc)) from None
    return schedule


def _value(text: str, field: _Field) -> int:
    lowered = text.lower()
    if field.names and lowered in field.names:
        return field.names.index(lowered) + field.names_start
    if not text.isdigit():
        hint = " (Go's robfig/cron has no L, W, # or H)" if re.search(r"[LWH#]", text.upper()) else ""
        raise InvalidScheduleError(
            f"{field.name} field: {text!r} is not a number" + (" or a name" if field.names else "") + hint
        )
    number = int(text)
    if number < field.low or number > field.high:
        raise InvalidScheduleError(f"{field.name} field: {number} is outside {field.low}-{field.high}")
    return number


def _check_field(value: str, field: _Field) -> str:
    """Validate one field against robfig's grammar; return it in croniter's terms."""
    tokens = value.split(",")
    any_value = False
    for token in tokens:
        match = _TOKEN.match(token)
        if match is None or not token:
            raise InvalidScheduleError(f"{field.name} field: {token!r} is not valid")
        part, step = match.group("range"), match.group("step")
        if step is not None and (not step.isdigit() or int(step) < 1):
            raise InvalidScheduleError(f"{field.name} field: the step in {token!r} must be a positive number")
        if part in ("*", "?"):
            # robfig marks a plain star (a star with step 1 too) as "any", which
            # decides how day-of-month and day-of-week combine; croniter reads '*' so.
            any_value = any_value or step is None or int(step) == 1
            continue
        low, dash, high = part.partition("-")
        first = _value(low, field)
        if dash:
            last = _value(high, field)
            if first > last:
                raise InvalidScheduleError(f"{field.name} field: the range {part!r} starts after it ends")
    if any_value:
        return "*"
    return ",".join(token.replace("?", "*") for token in tokens)
