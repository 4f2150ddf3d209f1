"""Workers on Pub/Sub: Go's golden messages published straight to the topic run; ETAs,
retries and RetryTaskLater keep their times; names no worker knows are handed back; bad
messages are dead-lettered with the reason. Results in memory and in Redis."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from machinery_aio import Arg, RetryTaskLater, Server, Signature, State, TaskState, gotime
from machinery_aio.drivers.broker import DeadLetter
from machinery_aio.drivers.gcp.resources import Clients
from tests.conftest import golden
from tests.drivers.gcp.conftest import names, needs_emulator, pubsub_config
from tests.support.drivers import eventually

pytestmark = needs_emulator

CLOCK_SLACK = 0.05
"""Clock granularity between two clocks; not a timing threshold."""
UUID = re.compile(rb"(task|group|chord)_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def localise(body: bytes, queue: str, seen: dict[bytes, bytes]) -> bytes:
    """Fresh UUIDs (the same golden UUID always gets the same fresh one) and this test's queue."""

    def fresh(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        if old not in seen:
            seen[old] = match.group(1) + b"_" + str(uuid.uuid4()).encode()
        return seen[old]

    return UUID.sub(fresh, body).replace(b'"machinery_tasks"', b'"' + queue.encode() + b'"')


async def publish_as_go(server: Server, raw: Clients, *bodies: bytes) -> None:
    """What Go's broker does: Data = the Signature JSON, no attributes, to the topic named after
    the RoutingKey (here the topic and subscription exist already, as Go requires)."""
    from google.pubsub_v1 import PubsubMessage

    config = server.config
    await server.broker.connect()
    await server.broker.resources.queue(config.default_queue)  # type: ignore[attr-defined]
    await raw.publisher.publish(
        topic=names(config).topic_path(config.default_queue),
        messages=[PubsubMessage(data=body) for body in bodies],
    )


async def test_gos_plain_task_with_a_past_eta_runs(server: Server, raw: Clients) -> None:
    body = localise(golden("01_plain_task_int64_eta"), server.config.default_queue, {})
    sig = Signature.from_json(body)
    async with server.new_worker("w", concurrency=2):  # no queue: the URL's subscription
        await server.backend.set_state(TaskState.new(sig, State.PENDING))
        await publish_as_go(server, raw, body)
        assert await server.get_async_result(sig.uuid).get(timeout=30) == 3


async def test_gos_chain_runs(server: Server, raw: Clients) -> None:
    body = localise(golden("02_chain_onsuccess_nesting"), server.config.default_queue, {})
    head = Signature.from_json(body)
    assert head.on_success is not None
    assert head.on_success[0].on_success is not None
    last = head.on_success[0].on_success[0]
    async with server.new_worker("w", concurrency=2):
        await server.backend.set_state(TaskState.new(head, State.PENDING))
        await publish_as_go(server, raw, body)
        assert await server.get_async_result(last.uuid).get(timeout=30) == 48  # multiply(4, 12)


async def test_gos_chord_runs(server: Server, raw: Clients) -> None:
    seen: dict[bytes, bytes] = {}
    first = localise(golden("03_chord_member"), server.config.default_queue, seen)
    member_uuid = Signature.from_json(first).uuid.encode()
    second = first.replace(member_uuid, b"task_" + str(uuid.uuid4()).encode())
    members = [Signature.from_json(first), Signature.from_json(second)]
    callback = members[0].chord_callback
    assert callback is not None
    await server.backend.init_group(members[0].group_uuid, [m.uuid for m in members])
    for member in members:
        await server.backend.set_state(TaskState.new(member, State.PENDING))
    async with server.new_worker("w", concurrency=2):
        await publish_as_go(server, raw, first, second)
        assert await server.get_async_result(callback.uuid).get(timeout=60) == 4


@pytest.fixture
async def timed(unique: str, emulator: None) -> AsyncIterator[tuple[Server, dict[str, list[float]]]]:
    """A server (results in memory) whose tasks record when they run."""
    server = Server(pubsub_config(unique))
    runs: dict[str, list[float]] = {}

    @server.task("clock")
    async def clock(key: str, fail_times: int) -> int:
        runs.setdefault(key, []).append(time.time())
        if len(runs[key]) <= fail_times:
            raise ValueError(f"failure {len(runs[key])} on purpose")
        return len(runs[key])

    @server.task("later")
    async def later(key: str) -> int:
        runs.setdefault(key, []).append(time.time())
        if len(runs[key]) == 1:
            raise RetryTaskLater("not yet", 1.0)
        return len(runs[key])

    yield server, runs
    await server.close()


async def test_an_eta_never_runs_early_and_retries_keep_their_delays(
    timed: tuple[Server, dict[str, list[float]]],
) -> None:
    server, runs = timed
    eta = gotime.now() + timedelta(seconds=1.5)
    async with server.new_worker("w", concurrency=4):
        at_eta = await server.send_task(Signature(name="clock", args=[Arg.of("eta"), Arg.of(0)], eta=eta))
        retried = await server.send_task(
            Signature(name="clock", args=[Arg.of("retry"), Arg.of(2)], retry_count=2)
        )
        later = await server.send_task(Signature(name="later", args=[Arg.of("later")]))
        assert await at_eta.get(timeout=30) == 1
        assert await retried.get(timeout=30) == 3
        assert await later.get(timeout=30) == 2
    assert runs["eta"][0] >= eta.timestamp() - CLOCK_SLACK
    first, second, third = runs["retry"]
    assert second - first >= 1 - CLOCK_SLACK  # Fibonacci: 1 s, then 2 s
    assert third - second >= 2 - CLOCK_SLACK
    assert runs["later"][1] - runs["later"][0] >= 1 - CLOCK_SLACK


async def test_a_task_no_worker_here_knows_is_handed_back_for_one_that_does(
    timed: tuple[Server, dict[str, list[float]]], unique: str
) -> None:
    server, _ = timed
    other = Server(pubsub_config(unique))
    try:
        ignored = Signature(name="nobody", ignore_when_task_not_registered=True)
        async with other.new_worker("w-without", concurrency=2):  # knows no task
            result = await other.send_task(Signature(name="later", args=[Arg.of("handed")]))
            await other.send_task(ignored)
            held = await eventually(other.broker.get_held_tasks, "the hand-back")
            assert [s.uuid for s in held] == [result.task_uuid]
        async with server.new_worker("w-with", concurrency=2):
            assert await server.get_async_result(result.task_uuid).get(timeout=30) == 2
        assert await server.broker.count_pending() == 0  # the ignored task was dropped
    finally:
        await other.close()


async def test_bad_messages_are_dead_lettered_with_the_reason(
    timed: tuple[Server, dict[str, list[float]]], raw: Clients
) -> None:
    server, _ = timed
    bad_args = Signature(name="clock", args=[Arg(type="string", value="k"), Arg(type="string", value="x")])
    bad_args.uuid = f"task_{uuid.uuid4()}"
    bodies = [b"not json at all", b'{"Name": "clock"}', bad_args.to_json()]
    async with server.new_worker("w", concurrency=2):
        await publish_as_go(server, raw, *bodies)

        async def three() -> list[DeadLetter]:
            letters = await server.broker.get_dead_letters()
            return letters if len(letters) == 3 else []

        letters = await eventually(three, "three dead letters")
    by_body = {letter.body.encode(): letter for letter in letters}
    assert set(by_body) == set(bodies)
    assert all(letter.queue == server.config.default_queue and letter.failed_at for letter in letters)
    assert "not valid JSON" in by_body[bodies[0]].reason or "JSON" in by_body[bodies[0]].reason
    assert "UUID" in by_body[bodies[1]].reason
    assert "bad arguments for task clock" in by_body[bodies[2]].reason
    state = await server.backend.get_state(bad_args.uuid)
    assert state is not None
    assert state.state == State.FAILURE
    assert await server.broker.count_pending() == 0
    await asyncio.sleep(0)
