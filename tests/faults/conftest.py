"""Fixtures for the fault suite: worker subprocesses running tests/apps/faults_app.py, Redis
db 7 for results and execution counts, a RabbitMQ vhost per test, and the figures (tasks sent,
completed, lost, duplicated per case) printed at the end of the run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from machinery_aio import Config, Signature
from machinery_aio.config import AMQPConfig
from machinery_aio.drivers.backend import ResultBackend
from machinery_aio.drivers.redis.connection import RedisClient, create_redis
from tests.conftest import require_server
from tests.drivers.amqp.conftest import rabbitmq, vhost  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/7"
AMQP_BASE = "amqp://guest:guest@127.0.0.1:5672/"
FIGURES_FILE = ROOT / ".services" / "fault-figures.json"
PASSWORD = "faults-Pw-7f3e9c"
"""The password of the suite's private redis-servers: it must never appear in any log."""


@dataclass
class Figures:
    case: str
    sent: int
    completed: int
    lost: int
    duplicated: int
    note: str = ""


_figures: list[Figures] = []


def record_figures(
    case: str, *, sent: int, completed: int, lost: int, duplicated: int, note: str = ""
) -> None:
    """Add one case's counters to the report printed at the end of the run."""
    _figures.append(Figures(case, sent, completed, lost, duplicated, note))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _figures:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite figures")
    write(f"{'case':<44} {'sent':>7} {'completed':>9} {'lost':>5} {'duplicated':>10}  note")
    for f in _figures:
        write(f"{f.case:<44} {f.sent:>7} {f.completed:>9} {f.lost:>5} {f.duplicated:>10}  {f.note}")
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    FIGURES_FILE.write_text(json.dumps([asdict(f) for f in _figures], indent=1))


@pytest.fixture
def redis_needed() -> None:
    require_server("127.0.0.1", 6379, "Redis")


@pytest.fixture
async def raw(redis_needed: None, unique: str) -> AsyncIterator[RedisClient]:
    """A client on db 7; every key holding the test's ``unique`` name is deleted afterwards."""
    client = create_redis(REDIS_URL, Config())
    yield client
    keys = [key async for key in client.scan_iter(match=f"*{unique}*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])
    await client.aclose()


def redis_config(unique: str, url: str = REDIS_URL) -> Config:
    config = Config(broker=url, result_backend=url, default_queue=f"{unique}_q", results_expire_in=600)
    config.redis.delayed_tasks_key = f"{unique}_delayed"
    config.redis.consumer_timeout = 3
    return config


def amqp_config(unique: str, vhost_name: str) -> Config:
    """RabbitMQ on the test's own vhost, results in Redis db 7."""
    return Config(
        broker=f"{AMQP_BASE}{vhost_name}",
        result_backend=REDIS_URL,
        default_queue=f"{unique}_q",
        results_expire_in=600,
        amqp=AMQPConfig(exchange=f"{unique}_exchange"),
    )


def text(value: bytes | str) -> str:
    """A key or member read from Redis, as text."""
    return value.decode() if isinstance(value, bytes) else value


def item_of(sig: Signature) -> str:
    """The item a ``count`` or ``long`` task counts (its second argument)."""
    assert sig.args is not None
    return str(sig.args[1].value)


async def wait_for_success(backend: ResultBackend, sigs: Sequence[Signature], timeout: float = 60) -> None:
    """Wait until every task of ``sigs`` has its SUCCESS state stored; fail at once on a
    FAILURE, and after ``timeout`` seconds on anything else. The suite's tasks count their run
    in Redis inside the task, and the worker stores SUCCESS after the task returns, so a full
    count does not mean every state is there yet."""
    uuids = [s.uuid for s in sigs]
    deadline = time.monotonic() + timeout
    while True:
        states = await backend.get_states(uuids)
        failed = [
            (u, st.error) for u, st in zip(uuids, states, strict=True) if st is not None and st.is_failure()
        ]
        assert not failed, f"{len(failed)} tasks failed: {failed[:5]}"
        unfinished = [
            (u, st.state if st else None)
            for u, st in zip(uuids, states, strict=True)
            if st is None or not st.is_success()
        ]
        if not unfinished:
            return
        assert time.monotonic() < deadline, (
            f"{len(unfinished)} of {len(uuids)} states not SUCCESS after {timeout:g} s: {unfinished[:5]}"
        )
        await asyncio.sleep(0.1)


class Workers:
    """``machinery-aio worker`` subprocesses on tests/apps/faults_app.py; killed at teardown.
    Their output goes to <tmp>/<tag>.log."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        config: Config,
        tag: str,
        concurrency: int = 10,
        *,
        grace_period: float = 30.0,
        faults_redis: str = REDIS_URL,
        extra: tuple[str, ...] = (),
        **env: str,
    ) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            "BROKER": config.broker,
            "RESULT_BACKEND": config.result_backend,
            "DEFAULT_QUEUE": config.default_queue,
            "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
            "REDIS_CONSUMER_TIMEOUT": str(config.redis.consumer_timeout),
            "AMQP_EXCHANGE": config.amqp.exchange,
            "RESULTS_EXPIRE_IN": str(config.results_expire_in),
            "FAULTS_REDIS": faults_redis,
            "PYTHONPATH": str(ROOT),
            **env,
        }
        with (self.tmp / f"{tag}.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "machinery_aio",
                    "worker",
                    "-A",
                    "tests.apps.faults_app:server",
                    "-c",
                    str(concurrency),
                    "-t",
                    tag,
                    "--no-scheduler",
                    "--grace-period",
                    str(grace_period),
                    *extra,
                ],
                env=environ,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[tag] = proc
        return proc

    def log(self, tag: str) -> str:
        return (self.tmp / f"{tag}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)

    def leaked_password(self) -> list[str]:
        """Tags of the workers whose output contains the suite's password."""
        return [tag for tag in self.procs if PASSWORD in self.log(tag)]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.kill_all()
    assert started.leaked_password() == [], "a worker wrote the password into its log"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, persisted (AOF, fsync always)
    in a tmp dir so a restart keeps its data."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.dir),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    *(a.replace("{port}", str(self.port)) for a in self.args),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while "Ready to accept connections" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        with (self.dir / "redis.log").open("a") as log:
            log.write("\n--- stopped ---\n")

    def log(self) -> str:
        text = (self.dir / "redis.log").read_text(errors="replace")
        return text.rsplit("--- stopped ---", 1)[-1]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Start private redis-servers (extra redis-server arguments allowed); stopped afterwards."""
    made: list[PrivateRedis] = []

    def start(*args: str) -> PrivateRedis:
        directory = tmp_path / f"redis{len(made)}"
        directory.mkdir()
        server = PrivateRedis(directory, *args)
        server.start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop()
