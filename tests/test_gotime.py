"""Go's RFC 3339 times with nanoseconds: parse, format, copy, Unix nanoseconds."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from machinery_aio.gotime import (
    ZERO_TIME,
    NanoTime,
    coerce_time,
    format_time,
    now,
    parse_time,
    unix_nanos,
)

GO_ETA = "2025-01-15T10:30:00.123456789Z"


def test_nanoseconds_survive_parse_and_format() -> None:
    t = parse_time(GO_ETA)
    assert isinstance(t, NanoTime)
    assert (t.microsecond, t.nanosecond) == (123456, 789)
    assert t.tzinfo is UTC
    assert format_time(t) == GO_ETA


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-15T10:30:00Z",
        "2025-01-15T10:30:00.5Z",
        "2025-01-15T10:30:00.000000001Z",
        "2025-01-15T10:30:00.12Z",
        "2025-01-15T10:30:00.5+02:00",
        "2025-01-15T10:30:00.123-05:30",
        "0001-01-01T00:00:00Z",
    ],
)
def test_format_is_go_rfc3339nano(text: str) -> None:
    assert format_time(parse_time(text)) == text


def test_trailing_zeros_are_trimmed_as_go_does() -> None:
    assert format_time(parse_time("2025-01-15T10:30:00.120000000Z")) == "2025-01-15T10:30:00.12Z"
    assert format_time(datetime(2025, 1, 15, 10, 30, tzinfo=UTC)) == "2025-01-15T10:30:00Z"


def test_zero_offset_and_lowercase_z_are_written_as_z() -> None:
    assert format_time(parse_time("2025-01-15T10:30:00+00:00")) == "2025-01-15T10:30:00Z"
    assert format_time(parse_time("2025-01-15t10:30:00z")) == "2025-01-15T10:30:00Z"
    offset = datetime(2025, 1, 15, tzinfo=timezone(timedelta(hours=-3)))
    assert format_time(offset) == "2025-01-15T00:00:00-03:00"


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-15T10:30:00",  # no zone: Go rejects it too
        "2025-01-15 10:30:00Z",
        "2025-01-15T10:30:00.1234567891Z",  # ten fractional digits
        "2025-01-15",
        "",
        "yesterday",
        "2025-01-15T10:30:00Z trailing",
    ],
)
def test_bad_times_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


def test_impossible_dates_are_rejected() -> None:
    with pytest.raises(ValueError, match="month"):
        parse_time("2025-13-15T10:30:00Z")


def test_naive_datetimes_cannot_go_on_the_wire() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        coerce_time(datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="aware datetime or an RFC 3339 string"):
        coerce_time(1736937000)


def test_coerce_accepts_aware_datetimes_and_strings() -> None:
    aware = datetime(2025, 1, 15, 10, 30, 0, 5, tzinfo=UTC)
    coerced = coerce_time(aware)
    assert isinstance(coerced, NanoTime)
    assert coerced == aware
    assert coerce_time(GO_ETA).nanosecond == 789
    same = parse_time(GO_ETA)
    assert coerce_time(same) is same


def test_unix_nanos_matches_go_unixnano() -> None:
    # golden/README: the Redis delayed_tasks score of the 01 vector
    assert unix_nanos(parse_time(GO_ETA)) == 1736937000123456789
    assert unix_nanos(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert unix_nanos(parse_time("1970-01-01T00:00:01+01:00")) == -3599 * 10**9


def test_now_is_utc_with_nanoseconds() -> None:
    before = datetime.now(UTC)
    current = now()
    after = datetime.now(UTC)
    assert isinstance(current, NanoTime)
    assert current.tzinfo is UTC
    assert 0 <= current.nanosecond < 1000
    assert before - timedelta(microseconds=1) <= current <= after


def test_zero_time_is_gos_zero_value() -> None:
    assert format_time(ZERO_TIME) == "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "clone",
    [copy.copy, copy.deepcopy, lambda t: pickle.loads(pickle.dumps(t))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_copies_keep_the_nanoseconds(clone: object) -> None:
    t = parse_time(GO_ETA)
    cloned = clone(t)  # type: ignore[operator]
    assert isinstance(cloned, NanoTime)
    assert format_time(cloned) == GO_ETA


def test_repr_shows_go_format() -> None:
    assert repr(parse_time(GO_ETA)) == f"NanoTime({GO_ETA!r})"
