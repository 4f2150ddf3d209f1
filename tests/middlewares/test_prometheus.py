"""PrometheusMiddleware in one process: publishes, runs by outcome, durations, the running
gauge, the worker's up and queue-depth gauges, and several instances on one registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from machinery_aio import Arg, Config, RetryTaskLater, Server, Signature
from machinery_aio.middlewares.prometheus import PrometheusMiddleware, QueueMonitor


def sig(name: str, *values: object) -> Signature:
    return Signature(name=name, args=[Arg.of(v) for v in values])


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def server(unique: str, registry: CollectorRegistry) -> AsyncIterator[Server]:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=unique)
    server = Server(config, middlewares=[PrometheusMiddleware(registry)])
    once: set[str] = set()

    @server.task("add")
    async def add(x: int, y: int) -> int:
        return x + y

    @server.task("fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @server.task("again")
    async def again(key: str) -> str:
        if key not in once:
            once.add(key)
            raise RetryTaskLater("once more", 0.01)
        return key

    yield server
    await server.close()


async def test_a_producer_counts_publishes_in_the_default_registry(unique: str) -> None:
    config = Config(broker=f"memory://{unique}", result_backend=f"memory://{unique}", default_queue=unique)
    name = f"{unique}_task"
    async with Server(config, middlewares=[PrometheusMiddleware()]) as server:
        await server.send_task(sig(name, 1))
        await server.send_tasks([sig(name, 2), sig(name, 3)])
    assert REGISTRY.get_sample_value("machinery_tasks_published_total", {"task": name}) == 3


async def test_runs_are_counted_by_outcome_with_their_durations(
    server: Server, registry: CollectorRegistry
) -> None:
    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    async with server, server.new_worker("prom", 2):
        assert await (await server.send_task(sig("add", 1, 2))).get(timeout=10) == 3
        with pytest.raises(Exception, match="boom"):
            await (await server.send_task(sig("fail", "boom"))).get(timeout=10)
        assert await (await server.send_task(sig("again", "k"))).get(timeout=10) == "k"
    assert sample("machinery_tasks_total", task="add", state="SUCCESS") == 1
    assert sample("machinery_tasks_total", task="fail", state="FAILURE") == 1
    assert sample("machinery_tasks_total", task="again", state="RETRY") == 1
    assert sample("machinery_tasks_total", task="again", state="SUCCESS") == 1
    assert sample("machinery_task_duration_seconds_count", task="again") == 2
    assert sample("machinery_task_duration_seconds_bucket", task="add", le="+Inf") == 1
    assert sample("machinery_tasks_running") == 0
    # three sends and a re-publish of the retried task
    assert sample("machinery_tasks_published_total", task="again") == 2
    assert sample("machinery_tasks_published_total", task="add") == 1


async def test_the_running_gauge_counts_tasks_in_flight(server: Server, registry: CollectorRegistry) -> None:
    release = asyncio.Event()

    @server.task("hold")
    async def hold() -> None:
        await release.wait()

    async with server, server.new_worker("prom", 5):
        results = [await server.send_task(sig("hold")) for _ in range(3)]
        while registry.get_sample_value("machinery_tasks_running") != 3:
            await asyncio.sleep(0.01)
        release.set()
        for result in results:
            await result.get(timeout=10)
    assert registry.get_sample_value("machinery_tasks_running") == 0


async def test_several_middlewares_on_one_registry_share_the_metrics(registry: CollectorRegistry) -> None:
    first, second = PrometheusMiddleware(registry), PrometheusMiddleware(registry)
    assert first.metrics is second.metrics
    await first.after_publish(sig("x"))
    await second.after_publish(sig("x"))
    assert registry.get_sample_value("machinery_tasks_published_total", {"task": "x"}) == 2


async def test_the_monitor_reports_the_queue_depth_and_the_worker_up(
    server: Server, registry: CollectorRegistry
) -> None:
    metrics = PrometheusMiddleware(registry)
    queue = server.config.default_queue
    async with server:
        await server.send_task(sig("add", 1, 1))
        await server.send_task(sig("add", 2, 2))
        delayed = sig("add", 3, 3)
        delayed.eta = datetime.now(UTC) + timedelta(hours=1)
        await server.send_task(delayed)
        worker = server.new_worker("prom", 1)  # not started: the queue keeps its messages
        monitor = metrics.monitor(worker, interval=3600)
        running = asyncio.create_task(monitor.run())
        while registry.get_sample_value("machinery_queue_depth", {"queue": queue, "state": "ready"}) is None:
            await asyncio.sleep(0.01)
        assert registry.get_sample_value("machinery_worker_up") == 1
        depth = {
            state: registry.get_sample_value("machinery_queue_depth", {"queue": queue, "state": state})
            for state in ("ready", "delayed", "dead")
        }
        assert depth == {"ready": 2, "delayed": 1, "dead": 0}
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert registry.get_sample_value("machinery_worker_up") == 0


async def test_a_broker_that_cannot_be_read_is_logged_once_and_the_monitor_goes_on(
    server: Server,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def broken(queue: str | None = None) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("broker away")

    monkeypatch.setattr(server.broker, "count_pending", broken)
    monitor = PrometheusMiddleware(registry).monitor(server.new_worker("prom", 1), interval=0.01)
    with caplog.at_level(logging.WARNING, "machinery_aio.metrics"):
        running = asyncio.create_task(monitor.run())
        while calls < 3:
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert [r.getMessage() for r in caplog.records].count(
        f"could not read the depth of {server.config.default_queue!r}: broker away"
    ) == 1


def test_the_monitor_interval_must_be_positive(server: Server, registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="positive"):
        QueueMonitor(PrometheusMiddleware(registry).metrics, server.new_worker("prom", 1), 0)


def test_the_command_line_serves_the_apps_own_middleware_rather_than_a_second(
    server: Server, registry: CollectorRegistry
) -> None:
    import urllib.request

    from machinery_aio.middlewares.prometheus import serve_worker_metrics
    from tests.support.engine import free_port

    own = next(m for m in server.middlewares if isinstance(m, PrometheusMiddleware))
    worker = server.new_worker("prom", 1)
    port = free_port()
    added, stop = serve_worker_metrics(list(server.middlewares), worker, port, "127.0.0.1")
    try:
        assert added is None
        [monitor] = [s for s in worker.services if isinstance(s, QueueMonitor)]
        assert monitor.metrics is own.metrics
        own.metrics.published.labels("served").inc()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert 'machinery_tasks_published_total{task="served"} 1.0' in response.read().decode()
    finally:
        stop()
    added, stop = serve_worker_metrics([], worker, port, "127.0.0.1")  # the port is free again
    stop()
    assert isinstance(added, PrometheusMiddleware)
