"""SQS and DynamoDB (moto's server standing in for AWS; sized for its ~70 requests/s):
a worker killed with SIGKILL mid-drain on SQS loses nothing, and a chord run by two worker
processes with DynamoDB results calls back exactly once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from machinery_aio import Arg, Chord, Config, Group, Server, Signature
from machinery_aio.drivers.redis.connection import RedisClient
from tests.conftest import require_server
from tests.faults.conftest import REDIS_URL, Workers, free_port, record_figures, text, wait_for_success
from tests.faults.test_chords import stop, until
from tests.services import wait_open
from tests.support.aws import DYNAMODB_URL, MOTO, SQS_URL, aws_cleanup, aws_settings, use_moto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TASKS = 100
CONCURRENCY = 10
MEMBERS = 30
RESTART_TASKS = 10

use_moto()


@pytest.fixture
async def config(raw: RedisClient, unique: str) -> AsyncIterator[Config]:
    """SQS tasks, DynamoDB results, a 3 s visibility timeout; the test's own queue and tables."""
    require_server(*MOTO)
    made = Config(
        broker=SQS_URL, result_backend=DYNAMODB_URL, default_queue=f"{unique}_q", results_expire_in=600
    )
    aws_settings(made, unique)
    yield made
    await aws_cleanup(made, unique, set())


def aws_env(config: Config) -> dict[str, str]:
    return {
        "SQS_VISIBILITY_TIMEOUT": str(config.sqs.visibility_timeout),
        "SQS_WAIT_TIME_SECONDS": str(config.sqs.wait_time_seconds),
        "TASK_STATES_TABLE": config.dynamodb.task_states_table,
        "GROUP_METAS_TABLE": config.dynamodb.group_metas_table,
    }


async def test_a_worker_killed_mid_drain_on_sqs_loses_nothing(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    config.result_backend = REDIS_URL  # what is tested is SQS: keep moto's requests to SQS's
    server = Server(config)
    key = f"{unique}:runs"
    sigs = [
        Signature(uuid=f"task_{unique}_{i}", name="count", args=[Arg.of(key), Arg.of(str(i)), Arg.of(0.0)])
        for i in range(TASKS)
    ]
    try:
        await server.send_tasks(sigs)
        first = workers.start(config, "killed", CONCURRENCY, **aws_env(config))
        deadline = time.monotonic() + 120
        while await raw.hlen(key) < TASKS // 3:
            assert first.poll() is None, workers.log("killed")
            assert time.monotonic() < deadline, workers.log("killed")[-3000:]
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        assert await raw.hlen(key) < TASKS  # killed mid-drain
        last = workers.start(config, "last", CONCURRENCY, **aws_env(config))
        await until(lambda: _all_counted(raw, key), "the drain to finish: " + workers.log("last")[-3000:])
        await wait_for_success(server.backend, sigs)
        counts = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
        last.send_signal(signal.SIGTERM)
        assert last.wait(60) == 0, workers.log("last")
        assert await server.broker.count_pending() == 0
    finally:
        await server.close()
    duplicated = sum(counts.values()) - len(counts)
    record_figures(
        "aws. SIGKILL mid-drain, SQS (moto)",
        sent=TASKS,
        completed=len(counts),
        lost=TASKS - len(counts),
        duplicated=duplicated,
        note=f"concurrency {CONCURRENCY}, visibility timeout 3 s",
    )
    assert sorted(counts, key=int) == [str(i) for i in range(TASKS)]
    assert duplicated <= CONCURRENCY  # only what the killed worker held runs twice


async def _all_counted(raw: RedisClient, key: str) -> bool:
    return bool(await raw.hlen(key) >= TASKS)


async def test_a_chord_on_two_workers_with_dynamodb_results_calls_back_once(
    config: Config, raw: RedisClient, unique: str, workers: Workers
) -> None:
    server = Server(config)
    key = f"{unique}:cb"
    members = [
        Signature(uuid=f"task_{unique}_{i}", name="member", args=[Arg.of(key), Arg.of(i), Arg.of(False)])
        for i in range(MEMBERS)
    ]
    callback = Signature(uuid=f"chord_{unique}", name="chord_total", args=[Arg.of(key)])
    try:
        for tag in ("a", "b"):
            workers.start(config, tag, 8, **aws_env(config))
        result = await server.send_chord(Chord(Group(*members, group_uuid=f"group_{unique}"), callback))
        assert await result.get(timeout=180) == sum(range(MEMBERS))
        assert await raw.scard(f"{key}:pids") == 2, "both workers ran members"
        await asyncio.sleep(1)  # a second (wrong) callback would be sent by now
        await stop(workers)
        calls = int(await raw.get(key) or 0)
    finally:
        await server.close()
    record_figures(
        f"aws. chord {MEMBERS}, 2 workers, DynamoDB (moto)",
        sent=MEMBERS + 1,
        completed=MEMBERS + calls,
        lost=1 - min(calls, 1),
        duplicated=max(calls - 1, 0),
        note=f"callback runs {calls}",
    )
    assert calls == 1


class PrivateMoto:
    """A moto server of the test's own on a free port (moto keeps everything in memory, so a
    restart loses its queues, tables and messages: what AWS itself never does)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [*command, "-H", "127.0.0.1", "-p", str(self.port)], stdout=sink, stderr=subprocess.STDOUT
            )
        assert wait_open("127.0.0.1", self.port, 30), self.log.read_text()[-2000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


async def test_workers_and_producers_carry_on_after_the_emulator_restarts(
    raw: RedisClient, unique: str, workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks sent after a restart of moto run on the worker that was running before it: the
    worker reconnects, the queue and the tables are made again. (What moto held is gone, which
    real SQS and DynamoDB never do, so only tasks sent after the restart are counted.)"""
    moto = PrivateMoto(tmp_path / "moto.log")
    moto.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    config = Config(
        broker=SQS_URL, result_backend=DYNAMODB_URL, default_queue=f"{unique}_q", results_expire_in=600
    )
    aws_settings(config, unique)
    server = Server(config)
    key = f"{unique}:runs"

    def batch(label: str) -> list[Signature]:
        return [
            Signature(
                uuid=f"task_{unique}_{label}{i}",
                name="count",
                args=[Arg.of(key), Arg.of(f"{label}{i}"), Arg.of(0.0)],
            )
            for i in range(RESTART_TASKS)
        ]

    try:
        worker = workers.start(config, "w", 5, AWS_ENDPOINT_URL=moto.endpoint, **aws_env(config))
        before = batch("before")
        await server.send_tasks(before)
        await wait_for_success(server.backend, before)
        moto.kill()
        await asyncio.sleep(1)
        assert worker.poll() is None, workers.log("w")
        moto.start()
        after = batch("after")
        await server.send_tasks(after)
        await wait_for_success(server.backend, after, timeout=120)
        assert worker.poll() is None, workers.log("w")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, workers.log("w")
        counts = {text(k): int(v) for k, v in (await raw.hgetall(key)).items()}
    finally:
        await server.close()
        moto.kill()
    ran = [f"after{i}" for i in range(RESTART_TASKS) if counts.get(f"after{i}")]
    record_figures(
        "aws. moto restarted, tasks sent after it",
        sent=RESTART_TASKS,
        completed=len(ran),
        lost=RESTART_TASKS - len(ran),
        duplicated=sum(counts.get(f"after{i}", 0) for i in range(RESTART_TASKS)) - len(ran),
        note="the worker reconnected; queue and tables made again",
    )
    assert len(ran) == RESTART_TASKS
