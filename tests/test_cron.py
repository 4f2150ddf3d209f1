"""Cron specs as Go's robfig/cron reads them: parsing, next/previous ticks, timezones, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from machinery_aio.cron import (
    CronSchedule,
    EverySchedule,
    InvalidScheduleError,
    parse_go_duration,
    parse_schedule,
    resolve_timezone,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ticks(spec: str, start: datetime, count: int, tz: str | None = None) -> list[datetime]:
    schedule = parse_schedule(spec, tz)
    out = []
    moment = start
    for _ in range(count):
        moment = schedule.next_after(moment)
        out.append(moment)
    return out


START = utc(2025, 1, 1, 0, 0, 5)  # a Wednesday


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("*/5 * * * *", [utc(2025, 1, 1, 0, 5), utc(2025, 1, 1, 0, 10)]),
        ("0 * * * *", [utc(2025, 1, 1, 1), utc(2025, 1, 1, 2)]),
        ("30 9 * * mon-fri", [utc(2025, 1, 1, 9, 30), utc(2025, 1, 2, 9, 30)]),
        ("0 0 1 JAN *", [utc(2026, 1, 1), utc(2027, 1, 1)]),
        ("5/20 * * * *", [utc(2025, 1, 1, 0, 5), utc(2025, 1, 1, 0, 25), utc(2025, 1, 1, 0, 45)]),
        ("0 12 * * ?", [utc(2025, 1, 1, 12), utc(2025, 1, 2, 12)]),
        ("1-5/2 0 * * *", [utc(2025, 1, 1, 0, 1), utc(2025, 1, 1, 0, 3)]),
        # six fields: seconds first, as robfig's WithSeconds
        ("*/10 * * * * *", [utc(2025, 1, 1, 0, 0, 10), utc(2025, 1, 1, 0, 0, 20)]),
        ("30 15 10 * * *", [utc(2025, 1, 1, 10, 15, 30), utc(2025, 1, 2, 10, 15, 30)]),
        ("* * * * * *", [utc(2025, 1, 1, 0, 0, 6), utc(2025, 1, 1, 0, 0, 7)]),
        # descriptors
        ("@hourly", [utc(2025, 1, 1, 1), utc(2025, 1, 1, 2)]),
        ("@daily", [utc(2025, 1, 2), utc(2025, 1, 3)]),
        ("@midnight", [utc(2025, 1, 2), utc(2025, 1, 3)]),
        ("@weekly", [utc(2025, 1, 5), utc(2025, 1, 12)]),
        ("@monthly", [utc(2025, 2, 1), utc(2025, 3, 1)]),
        ("@yearly", [utc(2026, 1, 1), utc(2027, 1, 1)]),
        ("@annually", [utc(2026, 1, 1), utc(2027, 1, 1)]),
        ("  @HOURLY  ", [utc(2025, 1, 1, 1), utc(2025, 1, 1, 2)]),
        # @every is aligned to the Unix epoch, so every scheduler agrees on the ticks
        ("@every 30s", [utc(2025, 1, 1, 0, 0, 30), utc(2025, 1, 1, 0, 1)]),
        ("@every 1h30m", [utc(2025, 1, 1, 1, 30), utc(2025, 1, 1, 3)]),
        ("@every 1s", [utc(2025, 1, 1, 0, 0, 6), utc(2025, 1, 1, 0, 0, 7)]),
    ],
)
def test_next_ticks(spec: str, expected: list[datetime]) -> None:
    assert ticks(spec, START, len(expected)) == expected


def test_next_after_is_strict_and_latest_is_inclusive() -> None:
    for spec in ("*/5 * * * *", "*/5 * * * * *", "@every 5s"):
        schedule = parse_schedule(spec)
        on_tick = utc(2025, 1, 1, 0, 5)
        assert schedule.next_after(on_tick) > on_tick
        assert schedule.latest_at_or_before(on_tick) == on_tick
        assert schedule.latest_at_or_before(on_tick + timedelta(microseconds=300_000)) == on_tick
        assert schedule.latest_at_or_before(on_tick - timedelta(microseconds=1)) < on_tick


def test_ticks_are_whole_seconds_and_utc() -> None:
    moment = utc(2025, 6, 1, 12, 0, 0) + timedelta(microseconds=123_456)
    for spec in ("* * * * * *", "@every 7s", "0 9 * * *"):
        tick = parse_schedule(spec, "Asia/Tokyo").next_after(moment)
        assert tick.tzinfo is UTC
        assert tick.microsecond == 0


def test_every_rounds_like_robfig() -> None:
    # robfig/cron: whole seconds, at least one second.
    for text, interval in (("500ms", 1), ("1.5s", 1), ("2.9s", 2), ("90m", 5400), ("1.5h", 5400)):
        schedule = parse_schedule(f"@every {text}")
        assert isinstance(schedule, EverySchedule)
        assert schedule.interval == interval


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("30s", 30.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2h45m30.5s", 9930.5),
        ("+5s", 5.0),
        ("0", 0.0),
        ("1us", 1e-6),
        ("1µs", 1e-6),
        ("10ns", 1e-8),
        ("-2m", -120.0),
        (".5s", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "1h 30m", "s1", "1.5", "--1s", "1hh"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="Go duration"):
        parse_go_duration(text)


def test_day_of_month_and_day_of_week_combine_as_in_robfig() -> None:
    # Both restricted: either matches (OR). Star (also */1 and ?): only the other one counts.
    odd_days_or_mondays = ticks("0 0 */2 * 1", utc(2025, 1, 1), 4)
    assert [t.day for t in odd_days_or_mondays] == [3, 5, 6, 7]
    assert {t.weekday() for t in ticks("0 0 */1 * 1", utc(2025, 1, 1), 3)} == {0}
    assert {t.weekday() for t in ticks("0 0 ? * 1", utc(2025, 1, 1), 3)} == {0}
    assert {t.weekday() for t in ticks("0 0 *,5 * 1", utc(2025, 1, 1), 3)} == {0}


def test_timezone_reads_fields_in_local_time() -> None:
    winter = parse_schedule("0 9 * * *", "Europe/Paris").next_after(utc(2025, 1, 15))
    summer = parse_schedule("0 9 * * *", "Europe/Paris").next_after(utc(2025, 7, 15))
    assert winter == utc(2025, 1, 15, 8)
    assert summer == utc(2025, 7, 15, 7)


def test_timezone_prefix_as_robfig() -> None:
    for spec in ("CRON_TZ=Europe/Paris 0 9 * * *", "TZ=Europe/Paris 0 9 * * *"):
        assert parse_schedule(spec).next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 8)
    assert parse_schedule("CRON_TZ=Asia/Tokyo @daily").next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 15)
    # Agreeing explicit timezone is fine; a disagreeing one is an error.
    paris = parse_schedule("CRON_TZ=Europe/Paris 0 9 * * *", "Europe/Paris")
    assert paris.timezone == ZoneInfo("Europe/Paris")
    with pytest.raises(InvalidScheduleError, match=r"CRON_TZ=Europe/Paris.*Asia/Tokyo"):
        parse_schedule("CRON_TZ=Europe/Paris 0 9 * * *", "Asia/Tokyo")


def test_timezone_objects_and_default() -> None:
    assert parse_schedule("0 9 * * *").timezone is UTC
    fixed = timezone(timedelta(hours=2))
    assert parse_schedule("0 9 * * *", fixed).next_after(utc(2025, 1, 15)) == utc(2025, 1, 15, 7)
    assert resolve_timezone("utc") is UTC


def test_dst_spring_forward_runs_skipped_times_right_after_the_jump() -> None:
    # America/New_York jumps from 02:00 EST to 03:00 EDT on 2025-03-09.
    got = ticks("30 2 * * *", utc(2025, 3, 8, 12), 3, "America/New_York")
    assert got == [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30), utc(2025, 3, 11, 6, 30)]


def test_dst_fall_back_runs_a_repeated_wall_time_twice() -> None:
    # America/New_York repeats 01:00-02:00 on 2025-11-02 (EDT, then EST), as robfig/cron does.
    got = ticks("30 1 * * *", utc(2025, 11, 1, 12), 3, "America/New_York")
    assert got == [utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6, 30), utc(2025, 11, 3, 6, 30)]
    hourly = ticks("0 * * * *", utc(2025, 11, 2, 4, 30), 3, "America/New_York")
    assert hourly == [utc(2025, 11, 2, 5), utc(2025, 11, 2, 6), utc(2025, 11, 2, 7)]


def test_dst_previous_tick() -> None:
    schedule = parse_schedule("30 1 * * *", "America/New_York")
    assert schedule.latest_at_or_before(utc(2025, 11, 2, 6, 45)) == utc(2025, 11, 2, 6, 30)
    assert schedule.latest_at_or_before(utc(2025, 11, 2, 6, 15)) == utc(2025, 11, 2, 5, 30)


def test_schedule_kinds() -> None:
    assert isinstance(parse_schedule("@daily"), CronSchedule)
    assert isinstance(parse_schedule("@every 1m"), EverySchedule)
    assert parse_schedule("0 0 */1 * 1").describe() == "0 0 * * 1"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "minute field: 61 is outside 0-59"),
        ("* 24 * * *", "hour field: 24 is outside 0-23"),
        ("* * 0 * *", "day-of-month field: 0 is outside 1-31"),
        ("* * * 13 *", "month field: 13 is outside 1-12"),
        ("0 0 * * 7", "day-of-week field: 7 is outside 0-6"),
        ("60 * * * * *", "second field: 60"),
        ("*/0 * * * *", "step in '\\*/0' must be a positive number"),
        ("*/x * * * *", "must be a positive number"),
        ("5-1 * * * *", "starts after it ends"),
        ("1,,2 * * * *", "is not valid"),
        ("a * * * *", "minute field: 'a' is not a number"),
        ("* * * foo *", "month field: 'foo' is not a number or a name"),
        ("0 0 L * *", "robfig/cron has no L"),
        ("0 0 1W * *", "robfig/cron has no L, W"),
        ("0 0 * * 5#2", "robfig/cron has no"),
        ("H * * * *", "robfig/cron has no"),
        ("0 0 31 2 *", "never matches"),
        ("@reboot", "unknown descriptor '@reboot'"),
        ("@hourly 5", "takes no fields"),
        ("@every", "needs a duration"),
        ("@every 0s", "positive duration"),
        ("@every -5s", "positive duration"),
        ("@every 5 minutes", "not a Go duration"),
        ("CRON_TZ=Mars/Base 0 * * * *", "unknown timezone 'Mars/Base'"),
        ("CRON_TZ=UTC", "nothing follows"),
    ],
)
def test_bad_specs_fail_clearly(spec: str, problem: str) -> None:
    with pytest.raises(InvalidScheduleError, match=problem) as info:
        parse_schedule(spec)
    assert repr(spec) in str(info.value)


def test_bad_spec_types_and_timezones() -> None:
    with pytest.raises(InvalidScheduleError, match="must be a string"):
        parse_schedule(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError, match="unknown timezone 'Nowhere'"):
        parse_schedule("0 * * * *", "Nowhere")
    with pytest.raises(InvalidScheduleError, match="IANA zone name"):
        parse_schedule("0 * * * *", "")
    assert issubclass(InvalidScheduleError, ValueError)
