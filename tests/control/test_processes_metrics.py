"""``machinery-aio worker --processes 2 --metrics-port PORT``: the supervisor serves one
``/metrics`` summing both children (prometheus-client's multiprocess mode); a child killed
and replaced keeps its counts in the sums and loses its live gauges; the private directory
goes when the supervisor stops; a port in use is a clear error."""

from __future__ import annotations

import glob
import os
import signal
import socket
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from machinery_aio import Config, Server
from machinery_aio.cli import main
from machinery_aio.drivers.redis.connection import RedisClient, create_redis
from tests.drivers.redis.conftest import STANDALONE, delete_matching, make_config, need
from tests.support.engine import free_port
from tests.support.processes import CLIProcess, StartCLI
from tests.support.redis import eventually, sig

from .test_processes import children

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def redis(unique: str) -> AsyncIterator[tuple[Config, RedisClient]]:
    url = need(STANDALONE)
    client = create_redis(url, Config())
    yield make_config(url, unique), client
    await delete_matching(client, f"*{unique}*")
    await client.aclose()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "machinery-aio-metrics-*")))


async def _scraped_when(port: int, ok: Callable[[Samples], bool]) -> Samples | None:
    try:
        samples = scrape(port)
    except OSError:
        return None
    return samples if ok(samples) else None


async def _at_least(value: Any, minimum: int) -> bool:
    return int(await value) >= minimum


async def test_one_scrape_sums_both_processes_and_a_killed_child_keeps_its_counts(
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
    port = free_port()
    dirs_before = metric_dirs()
    parent: CLIProcess = cli_process(
        "worker", "-A", "tests.apps.redis_app:server", "--processes", "2", "-c", "4",
        "--no-scheduler", "--loglevel", "INFO", "--metrics-port", str(port), env=env,
    )  # fmt: skip
    server = Server(config)
    try:
        parent.wait_for(f"http://0.0.0.0:{port}/metrics (all processes)", timeout=60)
        [directory] = metric_dirs() - dirs_before  # a private directory of its own
        # both children consume and count (machinery_worker_up is summed over live processes)
        await eventually(lambda: _at_least(raw.zcard(f"{{{config.default_queue}}}:consumers"), 2), timeout=60)
        await eventually(
            lambda: _scraped_when(port, lambda s: value(s, "machinery_worker_up") == 2), timeout=60
        )

        # 1. tasks drained by both children: one scrape counts exactly what ran
        members = [sig(f"task_{unique}_m{i}", "member", unique, i, 0.02) for i in range(60)]
        results = await server.send_tasks(members)
        for result in results:
            await result.get(timeout=60)
        assert len(await raw.smembers(f"{unique}:pids")) == 2  # both processes ran some
        done = await eventually(
            lambda: _scraped_when(
                port, lambda s: value(s, "machinery_tasks_total", task="member", state="SUCCESS") >= 60
            ),
            timeout=60,
        )
        assert value(done, "machinery_tasks_total", task="member", state="SUCCESS") == 60
        assert value(done, "machinery_task_duration_seconds_count", task="member") == 60
        assert value(done, "machinery_tasks_running") == 0

        # 2. a child SIGKILLed mid-drain and replaced
        key = f"{unique}:done"
        records = [sig(f"task_{unique}_r{i}", "record", key, str(i), 0.05) for i in range(200)]
        await server.send_tasks(records)
        await eventually(lambda: _at_least(raw.scard(key), 20), timeout=60)
        before = scrape(port)
        victim = children(parent)[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: _true(len(children(parent)) >= 3), timeout=60)  # replaced
        await eventually(lambda: _at_least(raw.scard(key), 200), timeout=120, interval=0.2)

        # the dead child's live gauges go (mark_process_dead): up is 2 again, nothing runs
        def settled(s: Samples) -> bool:
            return value(s, "machinery_tasks_running") == 0 and value(s, "machinery_worker_up") == 2

        final = await eventually(lambda: _scraped_when(port, settled), timeout=60)
        # prometheus-client keeps a dead process's counter files: its counts stay in the sums
        assert value(final, "machinery_tasks_total", task="member", state="SUCCESS") == 60
        assert value(final, "machinery_task_duration_seconds_count", task="member") == 60
        for name, labels in before:
            if name.endswith(("_total", "_count", "_sum")):
                assert final.get((name, labels), 0.0) >= before[(name, labels)], name
        # every record ran; a run cut short by the SIGKILL ran again but was never counted twice
        runs = int(await raw.get(f"{key}:runs") or 0)
        counted = value(final, "machinery_tasks_total", task="record", state="SUCCESS")
        assert 200 <= counted <= runs

        parent.proc.send_signal(signal.SIGTERM)
        assert parent.finish(90) == 0
        assert directory not in metric_dirs()  # removed
    finally:
        await server.close()


async def _true(value: bool) -> bool:
    return value


def test_a_metrics_port_in_use_is_a_clear_error_before_any_child_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dirs_before = metric_dirs()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [
            "worker",
            "-A",
            "tests.apps.memory_app:server",
            "--processes",
            "2",
            "--metrics-port",
            str(port),
        ]
        code = main(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot serve metrics on port {port}" in err
    assert "started" not in err
    assert metric_dirs() == dirs_before  # its directory was removed again
