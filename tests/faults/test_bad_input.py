"""Case 3: thousands of generated malformed messages (hypothesis) mixed with good ones. The
worker stays up, good tasks complete, every bad message is dead-lettered with a reason and
listed by ``inspect dead``; a queue full of unknown task names does not make it spin."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from machinery_aio.drivers.redis.keys import QueueKeys
from tests.faults.conftest import (
    ROOT,
    Workers,
    amqp_config,
    cpu_seconds,
    item_of,
    record_figures,
    redis_config,
    text,
    wait_for_success,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

BAD = 2000
GOOD = 500


def generate(strategy: st.SearchStrategy[bytes], count: int) -> list[bytes]:
    """``count`` examples drawn by hypothesis (generation phase only, no shrinking)."""
    drawn: list[bytes] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(body: bytes) -> None:
        drawn.append(body)

    collect()
    return drawn


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def bad_messages(unique: str) -> st.SearchStrategy[bytes]:
    def body(**fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "UUID": f"task_{unique}_bad",
            "Name": "count",
            "Args": [
                {"Type": "string", "Value": "k"},
                {"Type": "string", "Value": "i"},
                {"Type": "float64", "Value": 0},
            ],
        }
        message.update(fields)
        return message

    valid = json.dumps(body()).encode()
    not_json = st.binary(min_size=1, max_size=300).filter(lambda b: not _is_json(b))
    truncated = st.integers(1, len(valid) - 1).map(lambda n: valid[:n])
    wrong_value = st.one_of(
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
    wrong_types = (
        st.tuples(
            st.sampled_from(["UUID", "Name", "Args", "RetryCount", "OnSuccess", "GroupTaskCount", "Headers"]),
            wrong_value,
            st.integers(0, 10**6),
        )
        .filter(
            lambda t: (
                not (t[0] in ("Args", "OnSuccess") and t[1] == [])
                and not (t[0] in ("RetryCount", "GroupTaskCount") and isinstance(t[1], int))
                and not (t[0] == "Headers" and isinstance(t[1], dict))
            )
        )
        .map(lambda t: json.dumps(body(**{"UUID": f"task_{unique}_wt{t[2]}", t[0]: t[1]})).encode())
    )
    bad_args = st.tuples(
        st.sampled_from(
            [
                [],
                [{"Type": "int64", "Value": "abc"}],
                [{"Type": "string", "Value": "k"}] * 5,
                [{"Type": "[]complex", "Value": 1}],
            ]
        ),
        st.integers(0, 10**6),
    ).map(lambda t: json.dumps(body(UUID=f"task_{unique}_ba{t[1]}", Args=t[0])).encode())
    missing = st.sampled_from(["UUID", "Name"]).map(
        lambda f: json.dumps({k: v for k, v in body().items() if k != f}).encode()
    )
    uuid = f"task_{unique}_x".encode()
    nested = st.integers(130, 3000).map(
        lambda depth: (
            b'{"UUID":"'
            + uuid
            + b'","Name":"count","OnSuccess":[' * depth
            + b'{"UUID":"u","Name":"count"}'
            + b"]}" * depth
        )
    )
    wrong_shape = st.sampled_from([b"[]", b"null", b"42", b'"text"', b"{}", b"true"])
    return st.one_of(not_json, truncated, wrong_types, bad_args, missing, nested, wrong_shape)


def huge_messages(unique: str) -> list[bytes]:
    """A few 1 MB messages: bounded traffic, so drawn by hand, not by hypothesis."""
    uuid = f"task_{unique}_huge"
    return [
        b'{"UUID":"' + uuid.encode() + b'","Name":"count","Args":"' + b"x" * 1_000_000 + b'"}',
        b"\x00" * 1_000_000,
        json.dumps(
            {"UUID": uuid, "Name": "count", "Args": [{"Type": "string", "Value": "y" * 500_000}] * 2}
        ).encode(),
    ]


@pytest.fixture(params=["redis", "rabbitmq"])
def config(request: pytest.FixtureRequest, unique: str, raw: RedisClient) -> Config:
    if request.param == "redis":
        return redis_config(unique)
    vhost: str = request.getfixturevalue("vhost")
    return amqp_config(unique, vhost)


async def test_malformed_messages_are_dead_lettered_and_good_ones_run(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    queue = config.default_queue
    bad = generate(bad_messages(unique), BAD - 3) + huge_messages(unique)
    server = Server(config)
    key = f"{unique}:runs"
    good = [
        Signature(
            uuid=f"task_{unique}_good{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)]
        )
        for i in range(GOOD)
    ]
    on_redis = config.broker.startswith("redis")
    connection = None if on_redis else await aio_pika.connect(config.broker)

    async def push(bodies: list[bytes]) -> None:
        if connection is None:
            await raw.rpush(queue, *bodies)
            return
        channel = await connection.channel()
        for body in bodies:  # straight into the queue (declared by the first send_task)
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
        await channel.close()

    async def backlog() -> int:
        if connection is None:
            return int(await raw.llen(queue))
        return len(await server.broker.get_pending_tasks(queue))

    try:
        per_good = len(bad) // GOOD
        for i, sig in enumerate(good):
            await server.send_task(sig)
            await push(bad[i * per_good : (i + 1) * per_good])
        if rest := bad[GOOD * per_good :]:
            await push(rest)
        proc = workers.start(config, "w", 20)
        deadline = time.monotonic() + 180
        while await raw.hlen(key) < GOOD or await backlog():
            assert proc.poll() is None, workers.log("w")[-3000:]
            assert time.monotonic() < deadline, workers.log("w")[-3000:]
            await asyncio.sleep(0.1)
        letters = await server.broker.get_dead_letters(queue)
        deadline = time.monotonic() + 60
        while len(letters) < len(bad):
            assert time.monotonic() < deadline, f"{len(letters)} of {len(bad)} dead-lettered"
            await asyncio.sleep(0.2)
            letters = await server.broker.get_dead_letters(queue)
        assert proc.poll() is None  # the worker stays up
        await wait_for_success(server.backend, good)  # the count is written before the state
        assert len(letters) == len(bad)
        assert all(letter.reason for letter in letters)
        listed = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "machinery_aio",
                "inspect",
                "dead",
                "-Q",
                queue,
                "--limit",
                str(len(bad) + 1),
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "BROKER": config.broker,
                "RESULT_BACKEND": config.result_backend,
                "AMQP_EXCHANGE": config.amqp.exchange,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert listed.stderr.strip() == f"{len(bad)} dead letters"
        assert "message is not valid JSON" in listed.stdout
        assert "bad arguments for task count" in listed.stdout
        runs = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
        counts = list(runs.values())
        note = f"{len(letters)} of {len(bad)} bad dead-lettered with a reason"
        if twice := explain_duplicates(runs, good, workers.log("w")):
            note += f"; {twice}"
    finally:
        if connection is not None:
            await connection.close()
        await server.close()
    record_figures(
        f"3. malformed + good messages, {config.broker.split(':')[0]}",
        sent=len(bad) + GOOD,
        completed=len(counts),
        lost=GOOD - len(counts),
        duplicated=sum(counts) - len(counts),
        note=note,
    )


def explain_duplicates(runs: dict[str, int], good: list[Signature], log: str) -> str:
    """For the good tasks counted more than once (none expected: no worker dies and no
    connection drops here): how often the worker logged receiving each, and its warnings."""
    twice = {item: n for item, n in runs.items() if n > 1}
    if not twice:
        return ""
    uuids = {item_of(sig): sig.uuid for sig in good}
    received = {item: log.count(f"received count[{uuids[item]}]") for item in twice}
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    return f"counted {twice}, received {received}, worker warnings {warnings[:5]}"


async def held_and_pending(server: Server, queue: str) -> tuple[list[Signature], list[Signature]]:
    """The tasks workers hold for ``queue`` and those waiting in it, read one after the other."""
    held = await server.broker.get_held_tasks(queue)
    pending = await server.broker.get_pending_tasks(queue)
    return held, pending


async def test_a_queue_of_unknown_task_names_does_not_spin(
    raw: RedisClient, unique: str, workers: Workers
) -> None:
    """The worker hands unknown names back to the broker with a growing delay: it stays idle,
    and the broker holds them where ``get_held_tasks`` (``inspect pending``) shows them."""
    config = redis_config(unique)
    queue = config.default_queue
    server = Server(config)
    sent = [Signature(uuid=f"task_{unique}_{i}", name=f"no_such_task_{i % 50}") for i in range(1000)]
    uuids = {s.uuid for s in sent}
    try:
        await server.send_tasks(sent)
        proc = workers.start(config, "w", 20)
        # While they wait out their delay, the broker holds them and lists them: every task is
        # held or pending. A hand-back landing between the two reads can hide one, so poll.
        deadline = time.monotonic() + 60
        most_held = 0
        while True:
            assert proc.poll() is None, workers.log("w")
            held, pending = await held_and_pending(server, queue)
            most_held = max(most_held, len(held))
            seen = [s.uuid for s in held] + [s.uuid for s in pending]
            if held and len(seen) == len(uuids) and set(seen) == uuids:
                break
            assert time.monotonic() < deadline, f"{len(held)} held, {len(pending)} pending of {len(uuids)}"
            await asyncio.sleep(0.2)
        assert {s.name for s in held} <= {f"no_such_task_{n}" for n in range(50)}
        before, started = cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(6)
        used = cpu_seconds(proc.pid) - before
        window = time.monotonic() - started
        assert proc.poll() is None
        # A worker re-fetching unknown tasks in a hot loop uses a whole core (~100 %).
        assert used < 0.25 * window, f"{used:.2f} s CPU in {window:.1f} s"
        held, _ = await held_and_pending(server, queue)
        most_held = max(most_held, len(held))
        assert held, "after a while the broker still holds the handed-back tasks"
        log = workers.log("w")
        assert all(f"task 'no_such_task_{n}' is not registered" in log for n in range(50)), log[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, workers.log("w")
        # Nothing dropped: the stopped worker holds nothing; every task waits in the queue or, if
        # it was handed back, in the delayed set until its back-off ends (any worker's mover puts
        # it back then).
        assert [k async for k in raw.scan_iter(match=QueueKeys(queue).processing("*"))] == []
        held, pending = await held_and_pending(server, queue)
        assert {s.uuid for s in held} | {s.uuid for s in pending} == uuids
        deadline = time.monotonic() + 30
        while await raw.llen(queue) < 1000:
            assert time.monotonic() < deadline, f"{await raw.llen(queue)} of 1000 back in the queue"
            await server.broker.move_delayed()
            await asyncio.sleep(0.5)
        assert {s.uuid for s in await server.broker.get_pending_tasks(queue)} == uuids
        assert await server.broker.get_held_tasks(queue) == []
    finally:
        await server.close()
    record_figures(
        "3. 1,000 unknown task names, Redis",
        sent=1000,
        completed=0,
        lost=0,
        duplicated=0,
        note=f"worker CPU {100 * used / window:.1f} % of {window:.0f} s; {most_held} held by the broker",
    )
