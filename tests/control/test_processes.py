"""``machinery-aio worker --processes N``: children drain a queue while one is killed (it is
replaced, nothing is lost); SIGTERM to the parent stops every child and exits 0; bad values
are refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from machinery_aio import Config, Server, State
from machinery_aio.cli import main
from machinery_aio.drivers.redis.connection import RedisClient, create_redis
from machinery_aio.supervisor import parse_processes
from tests.drivers.redis.conftest import STANDALONE, delete_matching, make_config, need
from tests.support.processes import ROOT, CLIProcess, StartCLI
from tests.support.redis import eventually, sig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STARTED = re.compile(r"worker process (\d+) started")


@pytest.fixture
async def redis(unique: str) -> AsyncIterator[tuple[Config, RedisClient]]:
    url = need(STANDALONE)
    client = create_redis(url, Config())
    yield make_config(url, unique), client
    await delete_matching(client, f"*{unique}*")
    await client.aclose()


def children(process: CLIProcess) -> list[int]:
    return [int(m.group(1)) for line in process.err if (m := STARTED.search(line))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_processes_drain_a_queue_while_one_is_killed(
    redis: tuple[Config, RedisClient], unique: str, cli_process: StartCLI
) -> None:
    config, raw = redis
    env = {
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
        "REDIS_CONSUMER_TIMEOUT": "3",
        "RESULTS_EXPIRE_IN": "600",
    }
    done = f"{unique}:done"
    count = 400
    sigs = [sig(f"task_{unique}_{i}", "record", done, str(i), 0.05) for i in range(count)]
    server = Server(config)
    parent = cli_process(
        "worker", "-A", "tests.apps.redis_app:server", "--processes", "2", "-c", "5",
        "--no-scheduler", "--loglevel", "INFO", env=env,
    )  # fmt: skip
    try:
        await eventually(lambda: _true(len(children(parent)) >= 2), timeout=60)
        await server.send_tasks(sigs)
        await eventually(lambda: _at_least(raw.scard(done), 40), timeout=120)
        victim = children(parent)[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: _true(len(children(parent)) >= 3), timeout=60)  # replaced
        await eventually(lambda: _at_least(raw.scard(done), count), timeout=200, interval=0.2)
        states = await server.backend.get_states([s.uuid for s in sigs])
        assert all(s is not None and s.is_success() for s in states)
        pids = children(parent)
        assert len(set(pids)) == 3
        parent.proc.send_signal(signal.SIGTERM)
        assert parent.finish(90) == 0
        assert not [pid for pid in pids if alive(pid)]
    finally:
        await server.close()


async def test_sigterm_to_the_parent_stops_every_child(
    redis: tuple[Config, RedisClient], cli_process: StartCLI
) -> None:
    config, _ = redis
    env = {
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
    }
    parent = cli_process(
        "worker", "-A", "tests.apps.redis_app:server", "--processes", "3", "--no-scheduler",
        "--loglevel", "INFO", env=env,
    )  # fmt: skip
    await eventually(lambda: _true(len(children(parent)) >= 3), timeout=60)
    pids = children(parent)
    time.sleep(0.5)
    parent.proc.send_signal(signal.SIGINT)
    assert parent.finish(60) == 0
    assert not [pid for pid in pids if alive(pid)]


async def test_a_rate_limit_holds_across_two_processes(
    redis: tuple[Config, RedisClient], unique: str, cli_process: StartCLI
) -> None:
    """40 tasks limited to 10/s on two processes start over about 4 s, about 10 in any
    second (the slack covers timer jitter; benchmarks/ratelimit.py prints the figures)."""
    config, raw = redis
    name = f"limited_{unique}"
    env = {
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
        "RATE_TASK_NAME": name,
    }
    parent = cli_process(
        "worker", "-A", "tests.apps.redis_app:server", "--processes", "2", "-c", "4",
        "--no-scheduler", "--loglevel", "INFO", env=env,
    )  # fmt: skip
    key = f"{unique}:starts"
    server = Server(config)
    try:
        await eventually(lambda: _true(len(children(parent)) >= 2), timeout=60)
        await eventually(lambda: _at_least(raw.zcard(f"{{{config.default_queue}}}:consumers"), 2), timeout=60)
        sigs = [sig(f"task_{unique}_{i}", name, key) for i in range(40)]
        await server.send_tasks(sigs)
        await eventually(lambda: _at_least(raw.llen(key), 40), timeout=120, interval=0.2)
        rows = [line.decode().split() for line in await raw.lrange(key, 0, -1)]
        starts = sorted(float(t) for t, _ in rows)
        busiest = max(sum(1 for s in starts if t <= s < t + 1.0) for t in starts)
        assert busiest <= 13  # about 10: never a calendar-second burst of 20
        assert starts[-1] - starts[0] >= 3.0  # about 3.9 s
        assert len({pid for _, pid in rows}) == 2  # both processes ran some
        parent.proc.send_signal(signal.SIGTERM)
        assert parent.finish(60) == 0
    finally:
        await server.close()


async def test_a_revoked_task_never_runs_after_the_worker_is_killed_and_restarted(
    redis: tuple[Config, RedisClient], unique: str, cli_process: StartCLI
) -> None:
    config, raw = redis
    env = {
        "BROKER": config.broker,
        "RESULT_BACKEND": config.result_backend,
        "DEFAULT_QUEUE": config.default_queue,
        "REDIS_DELAYED_TASKS_KEY": config.redis.delayed_tasks_key,
        "REDIS_CONSUMER_TIMEOUT": "3",
    }
    args = ("worker", "-A", "tests.apps.redis_app:server", "--no-scheduler", "--loglevel", "INFO")
    done = f"{unique}:done"
    server = Server(config)
    try:
        revoked = await server.send_task(sig(f"task_{unique}_revoked", "record", done, "revoked", 0.0))
        assert await server.revoke(revoked.task_uuid) is True
        await server.send_task(sig(f"task_{unique}_pending", "record", done, "pending", 0.0))
        first = cli_process(*args, env=env)
        first.wait_for("consuming")
        await eventually(lambda: raw.sismember(done, "pending"))
        delayed = sig(f"task_{unique}_delayed", "record", done, "delayed", 0.0)
        delayed.eta = datetime.now(UTC) + timedelta(seconds=2)
        delayed_result = await server.send_task(delayed)
        await server.revoke(delayed_result.task_uuid)
        first.proc.send_signal(signal.SIGKILL)
        first.finish(30)
        second = cli_process(*args, env=env)
        second.wait_for("consuming")
        marker = sig(f"task_{unique}_marker", "record", done, "marker", 0.0)
        marker.eta = datetime.now(UTC) + timedelta(seconds=3)
        await (await server.send_task(marker)).get(timeout=60)
        assert await raw.smembers(done) == {b"pending", b"marker"}
        for result in (revoked, delayed_result):
            state = await result.get_state()
            assert state.state is State.FAILURE
            assert state.error == "revoked"
        second.proc.send_signal(signal.SIGTERM)
        assert second.finish(60) == 0
    finally:
        await server.close()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_process_counts_are_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--processes", value])
    assert exited.value.code == 2
    assert "--processes must be" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--processes"):
        parse_processes(value)


def test_auto_is_the_number_of_cores() -> None:
    assert parse_processes("auto") == (os.cpu_count() or 1)
    assert parse_processes("3") == 3


async def _true(value: bool) -> bool:
    return value


async def _at_least(value: Any, minimum: int) -> bool:
    return int(await value) >= minimum


def test_reload_restarts_the_worker_when_a_source_file_changes(tmp_path: Path) -> None:
    app = tmp_path / "reloadapp.py"
    app.write_text("from machinery_aio import Config, Server\n\nserver = Server(Config())\n")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "machinery_aio",
            "worker",
            "-A",
            "reloadapp:server",
            "--reload",
            "--no-scheduler",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        first = _wait_for_children(parent, lines, 1)
        time.sleep(1.0)  # the watcher is running
        app.write_text(app.read_text() + "\nCHANGED = True\n")
        second = _wait_for_children(parent, lines, 2)
        assert first[0] != second[1]
        assert any("changed:" in line and "reloadapp.py" in line for line in lines)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0
        assert not alive(second[1])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stderr is not None:
            parent.stderr.close()


def _wait_for_children(parent: subprocess.Popen[str], lines: list[str], count: int) -> list[int]:
    """Read the supervisor's log until ``count`` children have started (a hang guard of 60 s)."""
    assert parent.stderr is not None
    deadline = time.monotonic() + 60
    while True:
        pids = [int(m.group(1)) for line in lines if (m := STARTED.search(line))]
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, lines
        line = parent.stderr.readline()
        assert line, lines
        lines.append(line)
