"""Worker processes on RabbitMQ that are killed, or lose their connections, lose no task."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machinery_aio import Arg, Config, Server, Signature
from tests.drivers.amqp.conftest import amqp_test_config, close_vhost_connections
from tests.support.rabbitmq import AMQP_URL

ROOT = Path(__file__).resolve().parents[3]
GATE_FROM = 5
CONCURRENCY = 3

pytestmark = pytest.mark.slow


class Workers:
    """Worker subprocesses running tests/apps/amqp_app.py; all are killed at teardown."""

    def __init__(self, config: Config, tmp: Path) -> None:
        self.config = config
        self.tmp = tmp
        self.record = tmp / "record.txt"
        self.gate = tmp / "gate"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, tag: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "BROKER": self.config.broker,
            "RESULT_BACKEND": self.config.result_backend,
            "DEFAULT_QUEUE": self.config.default_queue,
            "AMQP_EXCHANGE": self.config.amqp.exchange,
            "RESULTS_EXPIRE_IN": str(self.config.results_expire_in),
            "RECORD_FILE": str(self.record),
            "GATE_FILE": str(self.gate),
            "GATE_FROM": str(GATE_FROM),
            "PYTHONPATH": str(ROOT),
        }
        log = open(self.tmp / f"{tag}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "machinery_aio",
                "worker",
                "-A",
                "tests.apps.amqp_app:server",
                "-c",
                str(CONCURRENCY),
                "-t",
                tag,
                "--grace-period",
                "10",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def lines(self, kind: str) -> list[int]:
        if not self.record.exists():
            return []
        return [
            int(line.split()[1])
            for line in self.record.read_text().splitlines()
            if line.startswith(kind + " ")
        ]

    async def wait_mid_drain(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the open tasks are done and the gated ones are running (a hang guard of 60 s)."""
        async with asyncio.timeout(60):
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"worker exited with {proc.returncode}: {self.log(proc)}")
                started = [i for i in self.lines("start") if i >= GATE_FROM]
                if len(self.lines("done")) >= GATE_FROM and len(started) >= CONCURRENCY:
                    return
                await asyncio.sleep(0.05)

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        logs = sorted(self.tmp.glob("*.log"))
        return logs[index].read_text(errors="replace")[-3000:] if index < len(logs) else ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def workers_for(tmp_path: Path) -> Iterator[Callable[[Config], Workers]]:
    made: list[Workers] = []

    def factory(config: Config) -> Workers:
        workers = Workers(config, tmp_path)
        made.append(workers)
        return workers

    yield factory
    for workers in made:
        workers.stop_all()


def gated(index: int) -> Signature:
    return Signature(name="gated", args=[Arg(type="int64", value=index)])


async def test_sigkill_mid_drain_then_restart_completes_every_task(
    amqp_server: Callable[[Config], Server],
    amqp_config: Config,
    workers_for: Callable[[Config], Workers],
) -> None:
    server = amqp_server(amqp_config)
    sigs = [gated(i) for i in range(20)]
    results = await server.send_tasks(sigs)
    workers = workers_for(amqp_config)
    first = workers.start("first")
    await workers.wait_mid_drain(first)
    in_flight = {i for i in workers.lines("start") if i >= GATE_FROM}

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers.gate.touch()
    second = workers.start("second")
    values = [await r.get(timeout=120) for r in results]

    assert values == list(range(20))
    starts = workers.lines("start")
    for index in in_flight:  # unacked when the worker died: delivered again
        assert starts.count(index) == 2, (index, starts)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0


async def test_connections_closed_mid_drain_the_worker_reconnects_and_finishes(
    vhost: str,
    unique: str,
    workers_for: Callable[[Config], Workers],
) -> None:
    url = f"{AMQP_URL}{vhost}"
    config = amqp_test_config(unique, url=url)
    server = Server(config)
    workers = workers_for(config)
    try:
        results = await server.send_tasks([gated(i) for i in range(12)])
        worker = workers.start("worker")
        await workers.wait_mid_drain(worker)

        close_vhost_connections(vhost)  # the worker's, and this test's own
        more = await server.send_tasks([gated(i) for i in range(100, 106)])
        workers.gate.touch()
        values = [await r.get(timeout=120) for r in [*results, *more]]

        assert values == [*range(12), *range(100, 106)]
        assert worker.poll() is None, workers.log(worker)  # it survived, and carries on
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        await server.close()
