"""Periodic tasks in one process: registration, fresh copies, exactly-once ticks (memory lock)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from machinery_aio import Arg, Chain, Chord, Config, ConfigError, Group, Server, Signature, TaskContext
from machinery_aio.cli import main
from machinery_aio.drivers.memory.broker import MemoryBroker
from machinery_aio.periodic import (
    PERIODIC_NAME_HEADER,
    PERIODIC_TICK_HEADER,
    PeriodicEntry,
    Scheduler,
    format_tick,
    run_beat,
)
from tests.support.periodic import assert_each_tick_once

MakeServer = Callable[[Config], Server]


def config_for(unique: str, **extra: object) -> Config:
    settings: dict[str, object] = {
        "broker": f"memory://{unique}",
        "result_backend": f"memory://{unique}",
        "lock": f"memory://{unique}",
        "default_queue": f"{unique}_tasks",
        "app_name": unique,
    }
    return Config.model_validate({**settings, **extra})


def add_sig(a: int = 1, b: int = 2) -> Signature:
    return Signature(name="add", args=[Arg(type="int64", value=a), Arg(type="int64", value=b)])


async def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Hang guard only: poll ``check`` until true."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def record_sends(server: Server, into: list[tuple[str, str, Signature]], label: str = "") -> None:
    def hook(sig: Signature) -> None:
        headers = sig.headers or {}
        if PERIODIC_NAME_HEADER in headers:
            into.append((headers[PERIODIC_TICK_HEADER], label, sig))

    server.set_pre_publish_handler(hook)


def latest_tick(entry: PeriodicEntry) -> datetime:
    tick = entry.schedule.latest_at_or_before(datetime.now(UTC))
    assert tick is not None
    return tick


# -- registration ------------------------------------------------------------------


async def test_register_each_kind(memory_server: Server) -> None:
    server = memory_server
    task = server.register_periodic_task("*/5 * * * *", "t", add_sig())
    group = server.register_periodic_group("@hourly", "g", add_sig(), add_sig(), send_concurrency=2)
    chain = server.register_periodic_chain("0 0 * * * *", "c", add_sig(), Signature(name="double"))
    chord = server.register_periodic_chord("@every 30s", "ch", Signature(name="sum"), add_sig(), add_sig())
    assert [task.kind, group.kind, chain.kind, chord.kind] == ["task", "group", "chain", "chord"]
    assert group.send_concurrency == 2
    assert set(server.scheduler.entries) == {"t", "g", "c", "ch"}
    rows = await server.describe_periodic()
    assert [r["name"] for r in rows] == ["c", "ch", "g", "t"]
    assert rows[1]["tasks"] == ["add", "add", "sum"]


async def test_nothing_to_describe_until_something_is_registered(memory_server: Server) -> None:
    assert await memory_server.describe_periodic() == []
    memory_server.new_worker("w")  # a worker's scheduler with no entries describes nothing either
    assert await memory_server.describe_periodic() == []


async def test_a_worker_runs_the_scheduler_as_one_of_its_services(memory_server: Server) -> None:
    memory_server.register_periodic_task("@daily", "job", add_sig())
    assert memory_server.scheduler in memory_server.new_worker("w").services
    without = memory_server.new_worker("w", run_scheduler=False).services
    assert not any(isinstance(service, Scheduler) for service in without)


async def test_groups_and_chains_may_be_given_as_objects(memory_server: Server) -> None:
    entry = memory_server.register_periodic_group("@daily", "g", Group(add_sig(), add_sig()))
    assert len(entry.tasks) == 2
    entry = memory_server.register_periodic_chain("@daily", "c", [add_sig(), add_sig()])
    assert len(entry.tasks) == 2


@pytest.mark.parametrize("spec", ["61 * * * *", "* * * *", "@every 0s", "0 0 30 2 *", "0 0 L * *", ""])
async def test_bad_spec_fails_at_registration(memory_server: Server, spec: str) -> None:
    server = memory_server
    registrations: list[Callable[[], object]] = [
        lambda: server.register_periodic_task(spec, "x", add_sig()),
        lambda: server.register_periodic_group(spec, "x", add_sig()),
        lambda: server.register_periodic_chain(spec, "x", add_sig()),
        lambda: server.register_periodic_chord(spec, "x", Signature(name="cb"), add_sig()),
    ]
    for register in registrations:
        with pytest.raises(ValueError, match="invalid periodic spec") as info:
            register()
        assert repr(spec) in str(info.value)
    assert await server.describe_periodic() == []


async def test_bad_registrations_fail_clearly(memory_server: Server) -> None:
    server = memory_server
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        server.register_periodic_task("@daily", "", add_sig())
    with pytest.raises(TypeError, match="takes Signatures, got str"):
        server.register_periodic_task("@daily", "x", "add")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a task name"):
        server.register_periodic_task("@daily", "x", Signature())
    with pytest.raises(TypeError, match="send_concurrency is a keyword argument"):
        server.register_periodic_group("@daily", "x", 5, add_sig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs at least one Signature"):
        server.register_periodic_group("@daily", "x")
    with pytest.raises(ValueError, match="send_concurrency must be 0"):
        server.register_periodic_group("@daily", "x", add_sig(), send_concurrency=-1)
    with pytest.raises(TypeError, match="callback must be a Signature"):
        server.register_periodic_chord("@daily", "x", None, add_sig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="callback needs a task name"):
        server.register_periodic_chord("@daily", "x", Signature(), add_sig())
    with pytest.raises(ValueError, match="missed must be 'skip' or 'once'"):
        server.register_periodic_task("@daily", "x", add_sig(), missed="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Base'"):
        server.register_periodic_task("@daily", "x", add_sig(), timezone="Mars/Base")
    assert await server.describe_periodic() == []


async def test_registering_a_name_again_replaces_it(memory_server: Server) -> None:
    memory_server.register_periodic_task("@daily", "x", add_sig())
    memory_server.register_periodic_task("@hourly", "x", Signature(name="other"))
    rows = await memory_server.describe_periodic()
    assert [(r["spec"], r["tasks"]) for r in rows] == [("@hourly", ["other"])]


async def test_registration_keeps_a_private_copy(memory_server: Server) -> None:
    sig = add_sig()
    entry = memory_server.register_periodic_task("@daily", "x", sig)
    sig.name = "changed"
    sig.args = []
    work = entry.build(datetime.now(UTC))
    assert isinstance(work, Signature)
    assert work.name == "add"
    assert work.python_args() == [1, 2]


# -- fresh copies ------------------------------------------------------------------


TICK = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


async def test_each_tick_sends_a_fresh_task(memory_server: Server) -> None:
    template = add_sig()
    template.uuid = "task_fixed"
    template.headers = {"trace": "x"}
    template.on_success = [Signature(name="notify", uuid="task_cb")]
    entry = memory_server.register_periodic_task("@hourly", "x", template)
    first, second = entry.build(TICK), entry.build(TICK + timedelta(hours=1))
    assert isinstance(first, Signature)
    assert isinstance(second, Signature)
    uuids = {first.uuid, second.uuid, "task_fixed"}
    assert len(uuids) == 3
    assert all(u.startswith("task_") for u in uuids)
    assert first.on_success
    assert second.on_success
    assert len({first.on_success[0].uuid, second.on_success[0].uuid, "task_cb"}) == 3
    assert first.headers == {
        "trace": "x",
        PERIODIC_NAME_HEADER: "x",
        PERIODIC_TICK_HEADER: "2025-01-01T12:00:00Z",
    }
    assert template.headers == {"trace": "x"}


async def test_each_tick_sends_a_fresh_group(memory_server: Server) -> None:
    entry = memory_server.register_periodic_group("@hourly", "g", add_sig(), add_sig(3, 4))
    first, second = entry.build(TICK), entry.build(TICK)
    assert isinstance(first, Group)
    assert isinstance(second, Group)
    assert first.group_uuid != second.group_uuid
    assert first.group_uuid.startswith("group_")
    assert len({*first.task_uuids(), *second.task_uuids()}) == 4
    assert all(s.group_uuid == first.group_uuid and s.group_task_count == 2 for s in first.tasks)
    assert [s.python_args() for s in first.tasks] == [[1, 2], [3, 4]]


async def test_each_tick_sends_a_fresh_chain(memory_server: Server) -> None:
    entry = memory_server.register_periodic_chain(
        "@hourly", "c", add_sig(), Signature(name="b"), Signature(name="c")
    )
    first, second = entry.build(TICK), entry.build(TICK)
    assert isinstance(first, Chain)
    assert isinstance(second, Chain)
    head = first.tasks[0]
    assert head.on_success
    assert head.on_success[0].name == "b"
    assert head.on_success[0].on_success
    assert head.on_success[0].on_success[0].name == "c"
    uuids = [s.uuid for s in first.tasks] + [s.uuid for s in second.tasks]
    assert len(set(uuids)) == 6


async def test_each_tick_sends_a_fresh_chord(memory_server: Server) -> None:
    entry = memory_server.register_periodic_chord(
        "@hourly", "ch", Signature(name="sum"), add_sig(), add_sig()
    )
    first, second = entry.build(TICK), entry.build(TICK)
    assert isinstance(first, Chord)
    assert isinstance(second, Chord)
    assert first.callback.uuid.startswith("chord_")
    assert first.callback.uuid != second.callback.uuid
    assert first.group.group_uuid != second.group.group_uuid
    for sig in first.group.tasks:
        assert sig.chord_callback is not None
        assert sig.chord_callback.uuid == first.callback.uuid
    assert first.callback.headers
    assert first.callback.headers[PERIODIC_NAME_HEADER] == "ch"


# -- exactly once per tick ---------------------------------------------------------


async def test_fire_sends_each_tick_once_across_schedulers(unique: str, make_server: MakeServer) -> None:
    # The tick keys alone (Go's period key, which has tests of its own, is left out here).
    servers = [make_server(config_for(unique, go_compatible=False)) for _ in range(5)]
    sent: list[tuple[str, str, Signature]] = []
    for i, server in enumerate(servers):
        record_sends(server, sent, str(i))
        server.register_periodic_task("* * * * * *", "job", add_sig())
    tick = datetime.now(UTC).replace(microsecond=0)
    for moment in (tick, tick + timedelta(seconds=1)):
        won = await asyncio.gather(*(s.scheduler.fire(s.scheduler.entries["job"], moment) for s in servers))
        assert won.count(True) == 1
    assert [t for t, _, _ in sent] == [format_tick(tick), format_tick(tick + timedelta(seconds=1))]
    assert len(await servers[0].broker.get_pending_tasks()) == 2


async def test_schedulers_in_one_process_send_each_tick_once(unique: str, make_server: MakeServer) -> None:
    servers = [make_server(config_for(unique)) for _ in range(3)]
    sent: list[tuple[str, str, Signature]] = []
    for i, server in enumerate(servers):
        record_sends(server, sent, str(i))
        server.register_periodic_task("@every 1s", "job", add_sig())
    runs = [asyncio.create_task(s.scheduler.run()) for s in servers]
    try:
        await wait_until(lambda: len({t for t, _, _ in sent}) >= 5)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
    assert_each_tick_once([t for t, _, _ in sent], at_least=5)
    assert len({s.uuid for _, _, s in sent}) == len(sent)


async def test_periodic_chord_in_three_workers_calls_back_once_per_tick(
    unique: str, make_server: MakeServer
) -> None:
    ran: list[str] = []
    sent: list[tuple[str, str, Signature]] = []

    def setup(server: Server) -> Server:
        async def add(a: int, b: int) -> int:
            return a + b

        async def total(ctx: TaskContext, *values: int) -> int:
            ran.append(ctx.headers[PERIODIC_TICK_HEADER])
            return sum(values)

        server.register_tasks({"add": add, "sum": total})
        return server

    servers = [setup(make_server(config_for(unique))) for _ in range(3)]
    for server in servers:
        record_sends(server, sent)
        server.register_periodic_chord(
            "* * * * * *", "rollup", Signature(name="sum"), add_sig(), add_sig(3, 4)
        )
    workers = [s.new_worker(f"w{i}", concurrency=4) for i, s in enumerate(servers)]
    for worker in workers:
        await worker.start()
    try:
        await wait_until(lambda: len(set(ran)) >= 4)
    finally:
        for worker in workers:
            await worker.stop()
    members = [(t, s) for t, _, s in sent if s.name == "add"]
    assert_each_tick_once([t for t, s in members if s.python_args() == [1, 2]], at_least=4)
    # Drain what was sent but not run yet, with a worker that does not schedule.
    drain = setup(make_server(config_for(unique))).new_worker("drain", run_scheduler=False)
    async with drain:
        await wait_until(lambda: set(ran) >= {t for t, _ in members})
    assert Counter(ran) == Counter({t for t, _ in members})


@pytest.mark.parametrize("run_scheduler", [True, False])
async def test_workers_run_the_scheduler_unless_told_not_to(
    unique: str, make_server: MakeServer, run_scheduler: bool
) -> None:
    server = make_server(config_for(unique))
    server.register_periodic_task("@daily", "job", add_sig())
    async with server.new_worker("w", run_scheduler=run_scheduler):
        for _ in range(5):
            await asyncio.sleep(0)
        assert server.scheduler.started.is_set() is run_scheduler
    assert not server.scheduler.started.is_set()


# -- missed ticks ------------------------------------------------------------------


async def test_due_applies_the_misfire_grace_and_missed_policy(memory_server: Server) -> None:
    scheduler = memory_server.scheduler
    scheduler.misfire_grace = 10
    skip = memory_server.register_periodic_task("@hourly", "skip", add_sig())
    once = memory_server.register_periodic_task("@hourly", "once", add_sig(), missed="once")
    tick = datetime(2025, 1, 1, 10, tzinfo=UTC)
    for entry in (skip, once):
        assert scheduler.due(entry, tick, tick) == tick + timedelta(seconds=10)
        assert scheduler.due(entry, tick, tick + timedelta(seconds=10)) == tick + timedelta(seconds=10)
    late = tick + timedelta(minutes=20)
    assert scheduler.due(skip, tick, late) is None
    assert scheduler.due(once, tick, late) == late + timedelta(seconds=10)


def _spec_far_from_now() -> tuple[str, datetime]:
    """An hourly spec whose latest tick is about 30 minutes ago (far outside the grace)."""
    now = datetime.now(UTC)
    minute = (now.minute + 30) % 60
    latest = now.replace(minute=minute, second=0, microsecond=0)
    if latest > now:
        latest -= timedelta(hours=1)
    return f"{minute} * * * *", latest


async def _start_and_settle(scheduler: Scheduler) -> asyncio.Task[None]:
    run = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(scheduler.started.wait(), 30)
    await scheduler.join_sends()
    return run


async def test_missed_once_sends_the_latest_missed_tick_once(unique: str, make_server: MakeServer) -> None:
    spec, latest = _spec_far_from_now()
    sent: list[tuple[str, str, Signature]] = []
    runs = []
    for i in range(3):
        server = make_server(config_for(unique))
        record_sends(server, sent, str(i))
        server.register_periodic_task(spec, "catch-up", add_sig(), missed="once")
        runs.append(await _start_and_settle(server.scheduler))
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    assert [t for t, _, _ in sent] == [format_tick(latest)]


async def test_missed_skip_sends_nothing_on_start(unique: str, make_server: MakeServer) -> None:
    spec, _ = _spec_far_from_now()
    server = make_server(config_for(unique))
    sent: list[tuple[str, str, Signature]] = []
    record_sends(server, sent)
    server.register_periodic_task(spec, "skip", add_sig())
    run = await _start_and_settle(server.scheduler)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    assert sent == []


async def test_a_tick_just_before_start_is_still_sent(unique: str, make_server: MakeServer) -> None:
    # Within misfire_grace, a tick that passed moments before the scheduler started is sent.
    server = make_server(config_for(unique))
    sent: list[tuple[str, str, Signature]] = []
    record_sends(server, sent)
    server.scheduler.misfire_grace = 3600
    server.register_periodic_task("@hourly", "recent", add_sig())
    run = await _start_and_settle(server.scheduler)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    latest = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert [t for t, _, _ in sent] == [format_tick(latest)]


# -- Go compatibility --------------------------------------------------------------


async def test_go_lock_is_taken_for_the_period(unique: str, make_server: MakeServer) -> None:
    server = make_server(config_for(unique))
    entry = server.register_periodic_task("@every 1h", "job", add_sig())
    key = server.scheduler.go_key(entry)
    assert key == f"machinery_lock_{unique}job@every 1h"
    assert await server.scheduler.fire(entry, latest_tick(entry))
    assert await server.lock.acquire(key, 5) is None  # held until the next tick


async def test_a_go_scheduler_holding_the_lock_keeps_python_out(
    unique: str, make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(config_for(unique))
    server.scheduler.clock_skew = 0.2
    sent: list[tuple[str, str, Signature]] = []
    record_sends(server, sent)
    entry = server.register_periodic_task("@every 10s", "job", add_sig())
    tick = entry.schedule.latest_at_or_before(datetime.now(UTC))
    assert tick is not None
    # What Go's LockWithRetries stores: the next tick in ns minus 1, expiring then.
    next_ns = int(entry.schedule.next_after(tick).timestamp()) * 1_000_000_000
    assert await server.lock.acquire(server.scheduler.go_key(entry), 20, str(next_ns - 1))
    with caplog.at_level(logging.INFO, "machinery_aio.periodic"):
        assert not await server.scheduler.fire(entry, tick)
    assert sent == []
    assert "a Go scheduler of this app sent this tick" in caplog.text


async def test_go_lock_is_not_used_when_not_go_compatible(unique: str, make_server: MakeServer) -> None:
    server = make_server(config_for(unique, go_compatible=False))
    entry = server.register_periodic_task("@every 1h", "job", add_sig())
    assert await server.lock.acquire(server.scheduler.go_key(entry), 60)  # as if Go held it
    assert await server.scheduler.fire(entry, latest_tick(entry))


async def test_app_name_defaults_to_argv0_in_the_go_key(memory_server: Server) -> None:
    import os
    import sys

    entry = memory_server.register_periodic_task("*/5 * * * *", "report", add_sig())
    assert memory_server.scheduler.go_key(entry) == (
        f"machinery_lock_{os.path.basename(sys.argv[0])}report*/5 * * * *"
    )
    tick_key = memory_server.scheduler.tick_key(entry, TICK)
    assert tick_key == f"machinery_periodic:report:{int(TICK.timestamp())}"


# -- errors are survived -----------------------------------------------------------


async def test_lock_errors_are_logged_and_the_scheduler_keeps_going(
    unique: str, make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(config_for(unique, lock="redis://127.0.0.1:1/0"))  # nothing listens there
    server.scheduler.misfire_grace = 0.3
    sent: list[tuple[str, str, Signature]] = []
    record_sends(server, sent)
    server.register_periodic_task("* * * * * *", "job", add_sig())
    run = asyncio.create_task(server.scheduler.run())
    with caplog.at_level(logging.ERROR, "machinery_aio.periodic"):
        try:
            await wait_until(lambda: caplog.text.count("not sent: the lock") >= 2)
            assert not run.done()
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert sent == []


class FailingBroker(MemoryBroker):
    """Its first ``failures`` publishes raise, as a broker connection that drops."""

    def __init__(self, config: Config, failures: int) -> None:
        super().__init__(config)
        self.failures = failures
        self.attempts: list[str] = []

    async def publish(self, signature: Signature) -> None:
        self.attempts.append(signature.uuid)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker is down")
        await super().publish(signature)


async def test_send_errors_are_retried(unique: str) -> None:
    config = config_for(unique)
    broker = FailingBroker(config, failures=1)
    async with Server(config, broker=broker) as server:
        entry = server.register_periodic_task("@every 1h", "job", add_sig())
        assert await server.scheduler.fire(entry, latest_tick(entry))
        assert len(broker.attempts) == 2
        assert broker.attempts[0] == broker.attempts[1]  # the same copy is retried
        assert len(await server.broker.get_pending_tasks()) == 1


async def test_send_gives_up_at_the_deadline(unique: str, caplog: pytest.LogCaptureFixture) -> None:
    config = config_for(unique)
    broker = FailingBroker(config, failures=1_000_000)
    async with Server(config, broker=broker) as server:
        entry = server.register_periodic_task("@every 1h", "job", add_sig())
        with caplog.at_level(logging.ERROR, "machinery_aio.periodic"):
            assert not await server.scheduler.fire(
                entry, latest_tick(entry), deadline=datetime.now(UTC) + timedelta(seconds=0.2)
            )
        assert await server.broker.get_pending_tasks() == []
    assert broker.attempts
    assert "not sent: broker is down" in caplog.text


# -- lifecycle ---------------------------------------------------------------------


async def test_stop_lets_a_send_in_progress_finish(unique: str, make_server: MakeServer) -> None:
    server = make_server(config_for(unique))
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(sig: Signature) -> None:
        entered.set()
        await release.wait()

    server.set_pre_publish_handler(slow)
    server.register_periodic_task("* * * * * *", "job", add_sig())
    run = asyncio.create_task(server.scheduler.run())
    await asyncio.wait_for(entered.wait(), 30)
    run.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(run, return_exceptions=True)
    assert len(await server.broker.get_pending_tasks()) == 1


async def test_entries_registered_while_running_are_scheduled(unique: str, make_server: MakeServer) -> None:
    server = make_server(config_for(unique))
    sent: list[tuple[str, str, Signature]] = []
    record_sends(server, sent)
    scheduler = server.scheduler
    run = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(scheduler.started.wait(), 30)
        server.register_periodic_task("* * * * * *", "late", add_sig())
        await wait_until(lambda: len(sent) >= 2)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_second_run_of_the_same_scheduler_waits_then_takes_over(memory_server: Server) -> None:
    # Two workers of one server: one scheduler runs; when its worker stops, the other takes over.
    memory_server.register_periodic_task("@daily", "job", add_sig())
    scheduler = memory_server.scheduler
    first = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(scheduler.started.wait(), 30)
    second = asyncio.create_task(scheduler.run())
    third = asyncio.create_task(scheduler.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(scheduler._loops) == 1
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
    assert scheduler.started.is_set()  # the first run goes on
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(scheduler.started.wait(), 30)  # the second one took over
    assert not second.done()
    assert len(scheduler._loops) == 1
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert not scheduler.started.is_set()


async def test_describe_shows_next_runs_in_the_entry_timezone(memory_server: Server) -> None:
    entry = memory_server.register_periodic_task("0 9 * * *", "x", add_sig(), timezone="Europe/Paris")
    assert isinstance(entry, PeriodicEntry)
    [row] = memory_server.scheduler.describe(datetime(2025, 1, 15, tzinfo=UTC))
    assert row == {
        "name": "x",
        "type": "task",
        "spec": "0 9 * * *",
        "timezone": "Europe/Paris",
        "next_run": "2025-01-15T09:00:00+01:00",
        "next_run_utc": "2025-01-15T08:00:00Z",
        "tasks": ["add"],
        "missed": "skip",
        "lock_key": f"machinery_periodic:x:{int(datetime(2025, 1, 15, 8, tzinfo=UTC).timestamp())}",
    }


# -- CLI -----------------------------------------------------------------------------


def test_cli_inspect_periodic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "periodic", "-A", "tests.apps.periodic_app:inspect_server"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["type"], r["timezone"]) for r in rows] == [
        ("morning-report", "task", "Europe/Paris"),
        ("rollup", "chord", "UTC"),
    ]
    for row in rows:
        assert datetime.fromisoformat(row["next_run"]) > datetime.now(UTC)


def test_cli_beat_without_periodic_tasks_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["beat", "-A", "tests.apps.periodic_app:empty_server"]) == 2
    assert "no periodic tasks are registered" in capsys.readouterr().err


async def test_a_lock_url_that_cannot_work_fails_at_registration_and_at_new_worker(
    unique: str, make_server: MakeServer
) -> None:
    server = make_server(config_for(unique, lock="zookeeper://127.0.0.1/"))
    with pytest.raises(ConfigError, match="unknown lock URL scheme 'zookeeper'"):
        server.register_periodic_task("@daily", "job", add_sig())
    with pytest.raises(ConfigError, match="unknown lock URL scheme 'zookeeper'"):
        server.new_worker("w")
    services = server.new_worker("w", run_scheduler=False).services  # no scheduler, no lock
    assert not any(isinstance(service, Scheduler) for service in services)


def test_scheduler_settings_must_not_be_negative(memory_server: Server) -> None:
    for setting in ("clock_skew", "misfire_grace", "stop_timeout"):
        with pytest.raises(ValueError, match="must not be negative"):
            Scheduler(memory_server.publisher, memory_server.lock, **{setting: -1.0})  # type: ignore[arg-type]


async def test_beat_stops_on_a_signal_and_at_once_on_a_second(unique: str, make_server: MakeServer) -> None:
    import os
    import signal

    server = make_server(config_for(unique))
    server.scheduler.stop_timeout = 300  # the second signal must not wait for it
    entered = asyncio.Event()

    async def stuck(sig: Signature) -> None:
        entered.set()
        await asyncio.Event().wait()

    server.set_pre_publish_handler(stuck)
    server.register_periodic_task("* * * * * *", "job", add_sig())
    beat = asyncio.create_task(run_beat(server.scheduler))
    await asyncio.wait_for(entered.wait(), 30)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # run_beat's handler is in place
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not beat.done()  # waiting for the send in progress
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(beat, 30)
    assert await server.broker.get_pending_tasks() == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
