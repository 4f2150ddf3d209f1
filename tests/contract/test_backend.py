"""What every result backend promises: states in order with their origin kept, groups,
chords triggered exactly once, waiting, expiry."""

from __future__ import annotations

import asyncio

import pytest

from machinery_aio import Config, Signature, State, TaskResult, TaskState
from machinery_aio.drivers.backend import ResultBackend
from machinery_aio.drivers.null.backend import NullBackend
from machinery_aio.gotime import ZERO_TIME
from tests.contract.conftest import Kit
from tests.support.drivers import eventually

pytestmark = pytest.mark.contract("backend")

EXPIRES_IN = 2
"""Seconds records live in the expiry test."""


def bare(uuid: str, state: State, **fields: object) -> TaskState:
    """A state as Go's constructors make it after PENDING: no task name, Go's zero time."""
    return TaskState(task_uuid=uuid, state=state, **fields)


def results(value: int) -> list[TaskResult]:
    return [TaskResult(type="int64", value=value)]


def member(kit: Kit, group: str, n: int, count: int) -> Signature:
    return kit.sig(n, group_uuid=group, group_task_count=count)


# -- states -----------------------------------------------------------------------------------


async def test_later_states_keep_the_task_name_and_creation_time_of_pending(kit: Kit) -> None:
    writer, reader = await kit.backend(), await kit.backend()
    sig = kit.sig(1)
    await writer.set_state(TaskState.new(sig, State.PENDING))
    pending = await reader.get_state(sig.uuid)
    assert pending is not None
    assert (pending.state, pending.task_name) == (State.PENDING, "add")
    assert pending.created_at != ZERO_TIME
    for state in (State.RECEIVED, State.STARTED, State.RETRY, State.STARTED):
        await writer.set_state(bare(sig.uuid, state))
        stored = await reader.get_state(sig.uuid)
        assert stored is not None
        assert (stored.state, stored.task_name, stored.created_at) == (state, "add", pending.created_at)
    await writer.set_final_state(sig, bare(sig.uuid, State.SUCCESS, results=results(3)))
    final = await reader.get_state(sig.uuid)
    assert final is not None
    assert (final.state, final.value, final.task_name) == (State.SUCCESS, 3, "add")
    assert final.created_at == pending.created_at


async def test_a_state_without_an_earlier_record_is_stored_as_given(kit: Kit) -> None:
    backend = await kit.backend()
    uuid = kit.uuid("task", 1)
    await backend.set_state(bare(uuid, State.STARTED, task_name="mul"))
    stored = await backend.get_state(uuid)
    assert stored is not None
    assert (stored.state, stored.task_name, stored.created_at) == (State.STARTED, "mul", ZERO_TIME)
    assert await backend.get_state(kit.uuid("task", "unknown")) is None
    assert await backend.get_group_meta(kit.uuid("group", "unknown")) is None


async def test_set_states_stores_each_tasks_states_in_order(kit: Kit) -> None:
    backend = await kit.backend()
    sigs = [kit.sig(i) for i in range(5)]
    await backend.set_states([TaskState.new(s, State.PENDING) for s in sigs])
    created = [(await backend.get_state(s.uuid)).created_at for s in sigs]  # type: ignore[union-attr]
    await backend.set_states([bare(s.uuid, state) for s in sigs for state in (State.RECEIVED, State.STARTED)])
    states = await backend.get_states([s.uuid for s in sigs])
    assert [(s.state, s.task_name, s.created_at) for s in states if s is not None] == [
        (State.STARTED, "add", c) for c in created
    ]


async def test_set_states_soon_then_await_stores_them(kit: Kit) -> None:
    backend = await kit.backend()
    sig = kit.sig(1)
    written = await backend.set_states_soon([TaskState.new(sig, State.PENDING)])
    await written
    pending = await backend.get_state(sig.uuid)
    assert pending is not None
    assert pending.state is State.PENDING
    written = await backend.set_states_soon([bare(sig.uuid, State.RECEIVED), bare(sig.uuid, State.STARTED)])
    await written
    started = await backend.get_state(sig.uuid)
    assert started is not None
    assert (started.state, started.task_name, started.created_at) == (
        State.STARTED,
        "add",
        pending.created_at,
    )


async def test_set_final_state_stores_success_and_failure(kit: Kit) -> None:
    writer, reader = await kit.backend(), await kit.backend()
    ok, bad = kit.sig(1), kit.sig(2)
    await writer.set_states([TaskState.new(ok, State.PENDING), TaskState.new(bad, State.PENDING)])
    await writer.set_final_state(ok, TaskState.new(ok, State.SUCCESS, results=results(7)))
    await writer.set_final_state(bad, TaskState.new(bad, State.FAILURE, error="deliberate failure"))
    done, failed = await reader.get_states([ok.uuid, bad.uuid])
    assert done is not None
    assert failed is not None
    assert done.is_success()
    assert done.value == 7
    assert failed.is_failure()
    assert failed.error == "deliberate failure"


async def test_get_states_answers_in_order_with_none_for_unknown_tasks(kit: Kit) -> None:
    backend = await kit.backend()
    sigs = [kit.sig(i) for i in range(3)]
    for n, sig in enumerate(sigs):
        await backend.set_state(TaskState.new(sig, State.SUCCESS, results=results(n)))
    unknown = kit.uuid("task", "unknown")
    states = await backend.get_states([sigs[2].uuid, unknown, sigs[0].uuid, sigs[1].uuid])
    assert [None if s is None else s.value for s in states] == [2, None, 0, 1]
    assert await backend.get_states([]) == []


# -- groups and chords -----------------------------------------------------------------------------


async def test_group_meta_is_stored_with_the_members_in_order(kit: Kit) -> None:
    writer, reader = await kit.backend(), await kit.backend()
    group = kit.uuid("group", 1)
    members = [kit.uuid("task", i) for i in (3, 1, 2)]
    await writer.init_group(group, members)
    meta = await reader.get_group_meta(group)
    assert meta is not None
    assert meta.group_uuid == group
    assert meta.task_uuids == members
    assert not meta.chord_triggered
    assert meta.created_at != ZERO_TIME


async def test_a_group_completes_when_every_member_is_final(kit: Kit) -> None:
    backend = await kit.backend()
    group = kit.uuid("group", 1)
    sigs = [member(kit, group, i, 3) for i in range(3)]
    await backend.init_group(group, [s.uuid for s in sigs])
    await backend.set_states([TaskState.new(s, State.PENDING) for s in sigs])
    assert not await backend.group_completed(group, 3)
    await backend.set_final_state(sigs[2], TaskState.new(sigs[2], State.SUCCESS, results=results(2)))
    await backend.set_final_state(sigs[0], TaskState.new(sigs[0], State.FAILURE, error="boom"))
    assert not await backend.group_completed(group, 3)
    await backend.set_final_state(sigs[1], TaskState.new(sigs[1], State.SUCCESS, results=results(1)))
    assert await backend.group_completed(group, 3)
    states = await backend.group_task_states(group, 3)
    assert [s.task_uuid for s in states] == [s.uuid for s in sigs]  # group order
    assert [s.state for s in states] == [State.FAILURE, State.SUCCESS, State.SUCCESS]
    assert [s.value for s in states[1:]] == [1, 2]
    assert not await backend.group_completed(kit.uuid("group", "unknown"), 3)


async def test_group_task_states_raises_lookup_error_for_a_missing_member(kit: Kit) -> None:
    backend = await kit.backend()
    group = kit.uuid("group", 1)
    first, second = member(kit, group, 1, 2), member(kit, group, 2, 2)
    await backend.init_group(group, [first.uuid, second.uuid])
    await backend.set_final_state(first, TaskState.new(first, State.SUCCESS, results=results(1)))
    with pytest.raises(LookupError, match=second.uuid):
        await backend.group_task_states(group, 2)
    with pytest.raises(LookupError):
        await backend.group_task_states(kit.uuid("group", "unknown"), 2)


async def test_a_chord_is_triggered_exactly_once_under_concurrent_members(kit: Kit) -> None:
    """Members finish at once in several processes (backend instances, each with its own
    connections), some twice (redelivered): one of them triggers the chord."""
    backends = [await kit.backend() for _ in range(3)]
    group = kit.uuid("group", 1)
    sigs = [member(kit, group, i, 8) for i in range(8)]
    await backends[0].init_group(group, [s.uuid for s in sigs])
    await backends[0].set_states([TaskState.new(s, State.PENDING) for s in sigs])

    async def finish(backend: ResultBackend, sig: Signature, value: int) -> tuple[ResultBackend, bool]:
        """What a worker does when a chord member succeeds (up to the trigger)."""
        await backend.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=results(value)))
        if not await backend.group_completed(group, len(sigs)):
            return backend, False
        return backend, await backend.trigger_chord(group)

    runs = [(backends[n % 3], sig, n) for n, sig in enumerate(sigs)]
    runs += [(backends[(n + 1) % 3], sigs[n], n) for n in (0, 5)]  # redelivered members
    outcomes = await asyncio.gather(*(finish(*run) for run in runs))
    winners = [backend for backend, fired in outcomes if fired]
    assert len(winners) == 1
    states = await winners[0].group_task_states(group, len(sigs))
    assert [s.task_uuid for s in states] == [s.uuid for s in sigs]
    assert [s.value for s in states] == list(range(8))
    meta = await backends[1].get_group_meta(group)
    assert meta is not None
    assert meta.chord_triggered
    for backend in backends:  # a member finishing once more does not fire it again
        assert (await finish(backend, sigs[3], 3))[1] is False


# -- waiting --------------------------------------------------------------------------------------


async def test_waiting_wakes_on_the_final_state(kit: Kit) -> None:
    writer, waiter = await kit.backend(), await kit.backend()
    sig = kit.sig(1)
    await writer.set_state(TaskState.new(sig, State.PENDING))
    waiting = [asyncio.create_task(waiter.wait_for_state(sig.uuid, 60)) for _ in range(3)]
    waiting.append(asyncio.create_task(writer.wait_for_state(sig.uuid, 60)))
    await writer.set_state(bare(sig.uuid, State.STARTED))
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiting)  # STARTED is not final
    await writer.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=results(5)))
    async with asyncio.timeout(60):  # a hang guard
        states = await asyncio.gather(*waiting)
    assert all(s.is_success() and s.value == 5 and s.task_name == "add" for s in states)


async def test_waiting_returns_a_final_state_at_once_and_times_out_with_timeout_error(kit: Kit) -> None:
    backend = await kit.backend()
    done, running = kit.sig(1), kit.sig(2)
    await backend.set_state(TaskState.new(done, State.FAILURE, error="boom"))
    await backend.set_state(TaskState.new(running, State.STARTED))
    assert (await backend.wait_for_state(done.uuid, 30)).error == "boom"
    with pytest.raises(TimeoutError, match=running.uuid):
        await backend.wait_for_state(running.uuid, 0.3)
    with pytest.raises(TimeoutError, match=kit.uuid("task", "unknown")):
        await backend.wait_for_state(kit.uuid("task", "unknown"), 0.3)


# -- expiry ----------------------------------------------------------------------------------------


async def test_records_expire(kit: Kit) -> None:
    backend = await kit.backend(results_expire_in=EXPIRES_IN)
    assert backend.expires_in == EXPIRES_IN
    sig = kit.sig(1)
    group = kit.uuid("group", 1)
    await backend.set_state(TaskState.new(sig, State.PENDING))
    await backend.init_group(group, [sig.uuid])
    assert await backend.get_state(sig.uuid) is not None
    assert await backend.get_group_meta(group) is not None

    async def gone() -> bool:
        return await backend.get_state(sig.uuid) is None and await backend.get_group_meta(group) is None

    await eventually(gone, "the records to expire")


# -- the null backend (not parametrized: it stores nothing by design) --------------------------


async def test_the_null_backend_stores_nothing_and_says_so() -> None:
    backend = NullBackend(Config(result_backend="null://"))
    assert not backend.capabilities.stores_results
    sig = Signature(uuid="task_null", name="add")
    await backend.set_state(TaskState.new(sig, State.PENDING))
    await backend.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=results(1)))
    await backend.init_group("group_null", [sig.uuid])
    assert await backend.get_state(sig.uuid) is None
    assert await backend.get_group_meta("group_null") is None
    assert await backend.group_completed("group_null", 1) is True  # as Go: callbacks fire
    assert await backend.trigger_chord("group_null") is True
    assert await backend.group_task_states("group_null", 1) == []
    with pytest.raises(RuntimeError, match="stores no results"):
        await backend.wait_for_state(sig.uuid, 1.0)
