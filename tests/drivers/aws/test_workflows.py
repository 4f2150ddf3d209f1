"""Workflows through a real worker on SQS with DynamoDB results: Go's golden messages sent
straight into a queue, retries, bad input; and the mixed pairs (SQS with Redis results,
Redis with DynamoDB results)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from machinery_aio import Arg, Chord, Config, Group, Server, Signature, State, TaskContext, TaskState
from machinery_aio.drivers.aws.broker import SQSBroker
from machinery_aio.drivers.redis.connection import create_redis
from tests.conftest import golden, require_server
from tests.support.aws import DYNAMODB_URL, SQS_URL, aws_cleanup, aws_settings
from tests.support.drivers import eventually

REDIS_URL = "redis://127.0.0.1:6379/1"


def register(server: Server, runs: dict[str, list[float]]) -> None:
    @server.task("add")
    async def add(*values: int) -> int:
        return sum(values)

    @server.task("multiply")
    def multiply(*values: int) -> int:
        product = 1
        for value in values:
            product *= value
        return product

    @server.task("flaky")
    async def flaky(ctx: TaskContext) -> int:
        runs.setdefault(ctx.task_uuid, []).append(time.time())
        if len(runs[ctx.task_uuid]) < 3:
            raise RuntimeError("not yet")
        return len(runs[ctx.task_uuid])


@pytest.fixture
async def app(aws_server: Server) -> AsyncIterator[tuple[Server, dict[str, list[float]]]]:
    runs: dict[str, list[float]] = {}
    register(aws_server, runs)
    async with aws_server.new_worker("aws", concurrency=8, run_scheduler=False):
        yield aws_server, runs


async def send_raw(server: Server, *bodies: bytes) -> None:
    broker = server.broker
    assert isinstance(broker, SQSBroker)
    client = await broker.clients.get()
    url = await broker.queues.url(server.config.default_queue)
    for body in bodies:
        await client.send_message(QueueUrl=url, MessageBody=body.decode())


# -- Go's golden messages --------------------------------------------------------------------------


async def test_a_go_plain_task_sent_straight_into_the_queue_runs(app: tuple[Server, Any]) -> None:
    server, _ = app
    await send_raw(server, golden("01_plain_task_int64_eta"))  # ETA in 2025: due
    state = await server.backend.wait_for_state("task_baec41c6-2eb7-429f-b1a2-1a9e5d5919ca", 30)
    assert state.value == 3


async def test_a_go_chain_runs_with_its_callbacks(app: tuple[Server, Any]) -> None:
    server, _ = app
    await send_raw(server, golden("02_chain_onsuccess_nesting"))
    state = await server.backend.wait_for_state("task_b04bbfe9-536b-4f90-8da0-0fe64ee23890", 30)
    assert state.value == 48  # multiply(4, add(5, 5, add(1, 1)))


async def test_a_go_chord_member_finishing_after_a_go_worker_calls_back(app: tuple[Server, Any]) -> None:
    """Go's sender wrote the group meta and states; a Go worker finished the other member."""
    server, _ = app
    first, second = "task_b6e536c9-a877-493d-8201-6ed9ed1aefd0", "task_c51a4378-15a2-4199-8981-92464cdfed0c"
    await server.backend.init_group("group_ae13d723-0c02-4101-8392-2d5aff8c4ce4", [first, second])
    await server.backend.set_state(TaskState.from_json(golden("10_task_state_pending")))
    done_by_go = golden("11_task_state_success").replace(first.encode(), second.encode())
    await server.backend.set_state(TaskState.from_json(done_by_go))
    await send_raw(server, golden("03_chord_member"))
    state = await server.backend.wait_for_state("chord_3cb95e1c-1469-4b4a-bded-313f7e582849", 30)
    assert state.value == 4  # multiply(2, 2)
    meta = await server.backend.get_group_meta("group_ae13d723-0c02-4101-8392-2d5aff8c4ce4")
    assert meta is not None
    assert meta.chord_triggered


# -- retries and bad input --------------------------------------------------------------------------


async def test_retries_keep_their_fibonacci_delays(app: tuple[Server, dict[str, list[float]]]) -> None:
    server, runs = app
    sig = Signature(name="flaky", retry_count=2)
    result = await server.send_task(sig)
    assert await result.get(timeout=60) == 3
    first, second, third = runs[sig.uuid]
    assert second - first >= 1.0 - 0.05  # RetryTimeout 1 s, then 2 s: never early
    assert third - second >= 2.0 - 0.05


async def test_bad_messages_are_dead_lettered_with_the_reason_and_the_worker_keeps_going(
    app: tuple[Server, Any], unique: str
) -> None:
    server, _ = app
    not_json = b"{this is not json"
    bad_args = Signature(uuid=f"task_{unique}_badargs", name="add", args=[Arg.of("not a number")]).to_json()
    await send_raw(server, not_json, bad_args)
    good = await server.send_task(Signature(name="add", args=[Arg.of(20), Arg.of(22)]))
    assert await good.get(timeout=30) == 42

    async def two() -> Any:
        letters = await server.broker.get_dead_letters()
        return letters if len(letters) == 2 else None

    letters = await eventually(two, "two dead letters")
    reasons = {letter.body: letter.reason for letter in letters}
    assert "not valid JSON" in reasons[not_json.decode()]
    assert "bad arguments for task add" in reasons[bad_args.decode()]
    assert all(letter.queue == server.config.default_queue for letter in letters)
    state = await server.backend.get_state(f"task_{unique}_badargs")
    assert state is not None
    assert state.state is State.FAILURE
    assert await server.broker.count_pending() == 0


# -- mixed pairs ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqs-redis", "redis-dynamodb"])
async def mixed(request: pytest.FixtureRequest, moto: None, unique: str) -> AsyncIterator[Config]:
    require_server("127.0.0.1", 6379, "Redis")
    broker, backend = (SQS_URL, REDIS_URL) if request.param == "sqs-redis" else (REDIS_URL, DYNAMODB_URL)
    config = Config(broker=broker, result_backend=backend, default_queue=f"{unique}_q", results_expire_in=600)
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    aws_settings(config, unique)
    yield config
    await aws_cleanup(config, unique, set())
    client = create_redis(REDIS_URL, Config())
    for key in [key async for key in client.scan_iter(match=f"*{unique}*")]:
        await client.delete(key)
    await client.aclose()


async def test_a_chord_runs_on_the_mixed_pairs(mixed: Config, unique: str) -> None:
    server = Server(mixed)
    register(server, {})
    try:
        async with server.new_worker("mixed", concurrency=4, run_scheduler=False):
            members = [
                Signature(uuid=f"task_{unique}_{n}", name="add", args=[Arg.of(n), Arg.of(n)])
                for n in range(3)
            ]
            callback = Signature(uuid=f"chord_{unique}", name="multiply")
            result = await server.send_chord(Chord(Group(*members, group_uuid=f"group_{unique}"), callback))
            assert await result.get(timeout=60) == 0 * 2 * 4
            plain = await server.send_task(Signature(name="add", args=[Arg.of(1), Arg.of(2)]))
            assert await plain.get(timeout=30) == 3
            assert json.loads((await server.backend.get_state(plain.signature.uuid)).to_json())["State"] == (  # type: ignore[union-attr]
                "SUCCESS"
            )
    finally:
        await server.close()


async def test_stop_task_deletion_on_error_leaves_a_failed_message_to_the_redrive_policy(
    aws_server: Server, sqs: Any, unique: str
) -> None:
    """The failed task's message comes back after the visibility timeout; the queue's redrive
    policy (maxReceiveCount 1) then moves it to the dead-letter queue, where inspection lists it."""
    queue = aws_server.config.default_queue
    dead = await sqs.create_queue(QueueName=f"{queue}_dead")
    dead_arn = (await sqs.get_queue_attributes(QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 1})
    await sqs.create_queue(QueueName=queue, Attributes={"RedrivePolicy": policy})
    runs: list[str] = []

    @aws_server.task("fail")
    async def fail(ctx: TaskContext) -> None:
        runs.append(ctx.task_uuid)
        raise ValueError("deliberate failure")

    async with aws_server.new_worker("keep", concurrency=2, run_scheduler=False):
        kept = Signature(name="fail", stop_task_deletion_on_error=True)
        deleted = Signature(name="fail")
        await aws_server.send_task(kept)
        await aws_server.send_task(deleted)
        for sig in (kept, deleted):
            assert (await aws_server.backend.wait_for_state(sig.uuid, 30)).error == "deliberate failure"

        async def moved() -> Any:
            letters = await aws_server.broker.get_dead_letters()
            return letters or None

        [letter] = await eventually(moved, "the kept message to reach the dead-letter queue")
    assert letter.body.encode() == kept.to_json()
    assert letter.reason == "moved here by the queue's redrive policy"
    assert runs.count(deleted.uuid) == 1
    assert runs.count(kept.uuid) == 1  # received once more, by the redrive policy instead of a worker
