"""Prometheus metrics for publishes, runs, queues and workers (needs the ``prometheus`` extra).

``PrometheusMiddleware()`` counts into prometheus-client's default registry (or the one
given); :meth:`PrometheusMiddleware.monitor` makes the background service a worker runs
to keep ``machinery_worker_up`` and ``machinery_queue_depth`` current, and
:func:`serve_metrics` serves ``/metrics``. ``machinery-aio worker --metrics-port PORT``
does all three with no code in the application; under ``--processes`` the children count
into prometheus-client's multiprocess files and the supervisor serves their sum (see
:mod:`machinery_aio.middlewares.prometheus_multiprocess`).

| metric | type | labels |
|---|---|---|
| ``machinery_tasks_published_total`` | counter | task |
| ``machinery_tasks_total`` | counter | task, state (SUCCESS, FAILURE, RETRY) |
| ``machinery_task_duration_seconds`` | histogram | task |
| ``machinery_tasks_running`` | gauge | |
| ``machinery_queue_depth`` | gauge | queue, state (ready, delayed, dead) |
| ``machinery_worker_up`` | gauge | |
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    from ..drivers import MissingExtraError

    raise MissingExtraError(
        "PrometheusMiddleware needs prometheus-client: pip install 'machinery-aio[prometheus]'"
    ) from exc

from ..context import TaskContext
from ..counts import WorkerView
from ..log import get_logger
from ..middleware import Middleware, TaskOutcome
from ..signature import Signature
from ..urls import mask_secrets

if TYPE_CHECKING:
    from ..worker import Worker


__all__ = [
    "PrometheusMiddleware",
    "QueueMonitor",
    "count_worker_metrics",
    "serve_metrics",
    "serve_worker_metrics",
]

logger = get_logger("machinery_aio.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
MONITOR_INTERVAL = 5.0
"""Seconds between reads of the queue's depth by ``machinery-aio worker --metrics-port``."""
DEPTH_LIMIT = 10_000
"""Delayed tasks and dead letters are counted by listing them, at most this many."""


@dataclass(frozen=True, slots=True)
class _Metrics:
    published: Counter
    tasks: Counter
    duration: Histogram
    running: Gauge
    queue_depth: Gauge
    worker_up: Gauge


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics(registry: CollectorRegistry) -> _Metrics:
    """The metrics in ``registry``, created once (a registry refuses a name twice)."""
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = _Metrics(
            published=Counter(
                "machinery_tasks_published", "Tasks published, by task name", ["task"], registry=registry
            ),
            tasks=Counter(
                "machinery_tasks",
                "Task runs finished, by task name and outcome (SUCCESS, FAILURE, RETRY)",
                ["task", "state"],
                registry=registry,
            ),
            duration=Histogram(
                "machinery_task_duration_seconds",
                "Seconds a task run took, by task name",
                ["task"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            # multiprocess_mode only matters under PROMETHEUS_MULTIPROC_DIR (--processes):
            # runs and workers add up over the live processes; every process reads the
            # same queue, so its depth is the latest reading by a live one
            running=Gauge(
                "machinery_tasks_running", "Tasks running now", registry=registry, multiprocess_mode="livesum"
            ),
            queue_depth=Gauge(
                "machinery_queue_depth",
                "Messages in a queue: ready to run, delayed (waiting for their ETA) and dead letters",
                ["queue", "state"],
                registry=registry,
                multiprocess_mode="livemostrecent",
            ),
            worker_up=Gauge(
                "machinery_worker_up", "Workers running", registry=registry, multiprocess_mode="livesum"
            ),
        )
    return found


class PrometheusMiddleware(Middleware):
    """Counts publishes and runs in ``registry`` (prometheus-client's default if None).

    Several instances on one registry share the same metrics.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = _metrics(self.registry)
        # labelled children by label values: prometheus-client's labels() takes a lock each time
        self._published: dict[str, Counter] = {}
        self._outcomes: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    async def after_publish(self, signature: Signature) -> None:
        child = self._published.get(signature.name)
        if child is None:
            child = self._published[signature.name] = self.metrics.published.labels(signature.name)
        child.inc()

    async def before_task(self, ctx: TaskContext) -> None:
        self.metrics.running.inc()

    async def after_task(self, ctx: TaskContext, outcome: TaskOutcome) -> None:
        metrics = self.metrics
        metrics.running.dec()
        key = (ctx.signature.name, outcome.state.value)
        children = self._outcomes.get(key)
        if children is None:
            children = self._outcomes[key] = (metrics.tasks.labels(*key), metrics.duration.labels(key[0]))
        children[0].inc()
        children[1].observe(outcome.duration)

    def monitor(self, worker: WorkerView, interval: float = 15.0) -> QueueMonitor:
        """A service for ``worker.services``: ``machinery_worker_up`` while the worker runs,
        ``machinery_queue_depth`` of its queue every ``interval`` seconds."""
        return QueueMonitor(self.metrics, worker, interval)


class QueueMonitor:
    """Keeps ``machinery_worker_up`` and ``machinery_queue_depth`` current for one worker."""

    def __init__(self, metrics: _Metrics, worker: WorkerView, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the queue depth interval must be positive")
        self.metrics = metrics
        self.worker = worker
        self.interval = interval

    async def run(self) -> None:
        self.metrics.worker_up.inc()
        failing = False
        try:
            while True:
                try:
                    await self.refresh()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not failing:
                        logger.warning(
                            "could not read the depth of %r: %s", self.worker.queue, mask_secrets(str(exc))
                        )
                    failing = True
                else:
                    failing = False
                await asyncio.sleep(self.interval)
        finally:
            self.metrics.worker_up.dec()

    async def refresh(self) -> None:
        """Read the queue's depth from the broker's inspection API."""
        broker, queue = self.worker.broker, self.worker.queue
        depth = self.metrics.queue_depth
        depth.labels(queue, "ready").set(await broker.count_pending(queue))
        if broker.capabilities.list_delayed:
            delayed = await broker.get_delayed_tasks(DEPTH_LIMIT)
            depth.labels(queue, "delayed").set(sum(1 for sig in delayed if sig.routing_key == queue))
        if broker.capabilities.dead_letters:
            depth.labels(queue, "dead").set(len(await broker.get_dead_letters(queue, DEPTH_LIMIT)))


def serve_metrics(
    port: int, address: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> Callable[[], None]:
    """Serve ``registry`` (the default one if None) at ``http://address:port/metrics`` from a
    thread; returns the function that stops it."""
    server, thread = start_http_server(port, address, registry if registry is not None else REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def count_worker_metrics(middlewares: Sequence[Middleware], worker: Worker) -> PrometheusMiddleware | None:
    """Count with a PrometheusMiddleware (unless ``middlewares`` already hold one, which then
    counts alone) and keep the worker's gauges current, serving nothing: what a child of
    ``machinery-aio worker --processes N --metrics-port PORT`` does (its supervisor serves).

    Returns the middleware to add to the server (None if it has one)."""
    existing = next((m for m in middlewares if isinstance(m, PrometheusMiddleware)), None)
    metrics = existing or PrometheusMiddleware()
    worker.services.append(metrics.monitor(worker, MONITOR_INTERVAL))
    return None if existing else metrics


def serve_worker_metrics(
    middlewares: Sequence[Middleware], worker: Worker, port: int, address: str = "0.0.0.0"
) -> tuple[PrometheusMiddleware | None, Callable[[], None]]:
    """What ``machinery-aio worker --metrics-port PORT`` does in one process: count as
    :func:`count_worker_metrics` does and serve that middleware's registry on ``port``.

    Returns the middleware to add to the server (None if it has one) and the function
    that stops serving."""
    existing = next((m for m in middlewares if isinstance(m, PrometheusMiddleware)), None)
    stop = serve_metrics(port, address, existing.registry if existing is not None else REGISTRY)
    return count_worker_metrics(middlewares, worker), stop
