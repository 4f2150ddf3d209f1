"""The command line's observability: ``inspect workers`` (live workers, gone after they stop or
die), ``worker --metrics-port`` scraped during a drain, the worker's summary line, the states
``send`` shows while it waits, and clear errors for bad values."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from machinery_aio import Arg, Config, Server, Signature
from machinery_aio.cli import main
from machinery_aio.drivers.redis.connection import create_redis
from tests.conftest import require_server
from tests.support.engine import free_port
from tests.support.processes import StartCLI
from tests.support.redis import eventually

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/3"
APP = "tests.apps.observed_app:server"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def redis_env(unique: str) -> AsyncIterator[dict[str, str]]:
    """Go's environment variables for a Redis setup of this test's own; its keys go afterwards."""
    require_server("127.0.0.1", 6379, "Redis")
    env = {
        "BROKER": REDIS_URL,
        "RESULT_BACKEND": REDIS_URL,
        "DEFAULT_QUEUE": f"{unique}_q",
        "REDIS_DELAYED_TASKS_KEY": f"{unique}_delayed",
        "RESULTS_EXPIRE_IN": "300",
    }
    yield env
    client = create_redis(REDIS_URL, Config())
    keys = [key async for key in client.scan_iter(match=f"*{unique}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def inspect_workers(env: dict[str, str]) -> list[dict[str, Any]]:
    """``machinery-aio inspect workers`` in a process configured by the environment alone."""
    done = subprocess.run(
        [sys.executable, "-m", "machinery_aio", "inspect", "workers", "--loglevel", "ERROR"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "live workers" in done.stderr
    workers: list[dict[str, Any]] = json.loads(done.stdout)
    return workers


def pids(env: dict[str, str], tag: str) -> set[int]:
    return {w["pid"] for w in inspect_workers(env) if w["name"] == tag}


async def test_inspect_workers_lists_a_live_worker_and_drops_it_after_it_exits_or_dies(
    cli_process: StartCLI, redis_env: dict[str, str], unique: str
) -> None:
    start = (
        "worker",
        "-A",
        APP,
        "--no-scheduler",
        "-t",
        f"{unique}-w",
        "-c",
        "3",
        "--heartbeat-interval",
        "0.2",
    )
    worker = cli_process(*start, env=redis_env)
    worker.wait_for("consuming")
    listed = await eventually(lambda: asyncio.to_thread(pids, redis_env, f"{unique}-w"))
    assert listed == {worker.proc.pid}
    [info] = [w for w in await asyncio.to_thread(inspect_workers, redis_env) if w["name"] == f"{unique}-w"]
    assert (info["queues"], info["concurrency"], info["host"]) == ([f"{unique}_q"], 3, socket.gethostname())
    assert {"running", "processed", "failed", "started_at", "version"} <= set(info)
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.finish, 60) == 0, worker.stderr
    assert await asyncio.to_thread(pids, redis_env, f"{unique}-w") == set()  # removed as it stopped

    dying = cli_process(*start, env=redis_env)
    dying.wait_for("consuming")
    assert await eventually(lambda: asyncio.to_thread(pids, redis_env, f"{unique}-w")) == {dying.proc.pid}
    dying.kill()  # SIGKILL: no goodbye; the record expires after four missed heartbeats
    await eventually(lambda: _gone(redis_env, f"{unique}-w"))


async def _gone(env: dict[str, str], tag: str) -> bool:
    return not await asyncio.to_thread(pids, env, tag)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_scraped_during_a_drain_add_up_to_what_ran(
    cli_process: StartCLI, redis_env: dict[str, str], unique: str
) -> None:
    port = free_port()
    worker = cli_process(
        "worker", "-A", APP, "--no-scheduler", "-c", "4", "--metrics-port", str(port), env=redis_env
    )
    worker.wait_for("consuming")
    assert f"metrics:     http://0.0.0.0:{port}/metrics" in worker.stderr
    config = Config.from_env(environ=redis_env)
    queue = redis_env["DEFAULT_QUEUE"]
    async with Server(config) as server:
        naps = [Signature(name="nap", args=[Arg.of(0.02)]) for _ in range(30)]
        fails = [Signature(name="fail", args=[Arg.of("no")]) for _ in range(4)]
        retried = Signature(name="fail", args=[Arg.of("again")], retry_count=1)
        later = Signature(name="nap", args=[Arg.of(0.0)], eta=_in(3600))
        results = await server.send_tasks([*naps, *fails, retried, later])
        client = create_redis(REDIS_URL, config)
        await client.rpush(queue, b"this is not a task")  # becomes a dead letter
        await client.aclose()
        seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
        waiting = asyncio.gather(*(r.get(timeout=60) for r in results[:30]))
        while not waiting.done():
            seen.append(await asyncio.to_thread(scrape, port))
            await asyncio.sleep(0.05)
        await waiting
        for r in results[30:35]:
            with pytest.raises(Exception, match=r"no|again"):
                await r.get(timeout=60)

    def settled(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> bool:
        return (
            value(samples, "machinery_queue_depth", queue=queue, state="dead") == 1
            and value(samples, "machinery_queue_depth", queue=queue, state="delayed") == 1
            and value(samples, "machinery_tasks_total", task="fail", state="FAILURE") == 5
        )

    final = await eventually(lambda: _scraped_when(port, settled), timeout=60)
    seen.append(final)
    # every scrape during the drain: counters only grow, never past what was sent
    for before, after in itertools.pairwise(seen):
        for key in [k for k in before if k[0].endswith(("_total", "_count"))]:
            assert after.get(key, 0.0) >= before[key]
    for samples in seen:
        assert value(samples, "machinery_tasks_total", task="nap", state="SUCCESS") <= 30
        assert 0 <= value(samples, "machinery_tasks_running") <= 4
        assert value(samples, "machinery_worker_up") <= 1
    assert value(final, "machinery_tasks_total", task="nap", state="SUCCESS") == 30
    assert value(final, "machinery_tasks_total", task="fail", state="FAILURE") == 5
    assert value(final, "machinery_tasks_total", task="fail", state="RETRY") == 1
    assert value(final, "machinery_task_duration_seconds_count", task="nap") == 30
    assert value(final, "machinery_task_duration_seconds_count", task="fail") == 6
    assert value(final, "machinery_task_duration_seconds_sum", task="nap") >= 30 * 0.02
    assert value(final, "machinery_tasks_running") == 0
    assert value(final, "machinery_worker_up") == 1
    assert value(final, "machinery_queue_depth", queue=queue, state="ready") == 0
    assert value(final, "machinery_tasks_published_total", task="fail") == 1  # the retry's re-publish
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.finish, 60) == 0, worker.stderr


async def _scraped_when(port: int, check: Any) -> Any:
    samples = await asyncio.to_thread(scrape, port)
    return samples if check(samples) else None


def _in(seconds: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_the_worker_prints_a_summary_line(cli_process: StartCLI) -> None:
    worker = cli_process(
        "worker",
        "-A",
        "tests.apps.memory_app:server",
        "--summary",
        "-t",
        "summarised",
        env={"MEMORY_APP_SEED": "add:1:2;fail:no"},
    )
    worker.wait_for("[summarised] processed ", timeout=60)
    line = next(line for line in worker.err if "[summarised] processed" in line)
    assert ", failed " in line
    assert "/s)" in line
    assert ", running " in line
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0


def test_send_shows_the_states_while_it_waits(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["send", "-A", "tests.apps.memory_app:server", "sleep", "0.6", "--loglevel", "ERROR"])
    out, err = capsys.readouterr()
    assert code == 0, err
    states = [line.split()[0] for line in err.splitlines() if line.startswith("  ") and " after " in line]
    assert states[-1] == "SUCCESS"
    assert "STARTED" in states
    assert json.loads(out.splitlines()[-1]) == "slept"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", "--metrics-port", "0"], "a port is 1 to 65535"),
        (["worker", "--metrics-port", "http"], "not a port number"),
        (["worker", "--heartbeat-interval", "-1"], "seconds must be 0 or more"),
        (["worker", "--heartbeat-interval", "soon"], "not a number of seconds"),
    ],
)
def test_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_metrics_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["worker", "-A", "tests.apps.memory_app:server", "--metrics-port", str(port)])
    assert code == 2
    assert f"cannot serve metrics on port {port}" in capsys.readouterr().err


def test_inspect_workers_without_a_registry_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "workers", "-A", "tests.apps.observed_app:without_heartbeats"]) == 2
    assert "keeps worker heartbeats" in capsys.readouterr().err
