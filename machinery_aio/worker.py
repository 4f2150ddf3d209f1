"""The worker: fetch from the broker, run under a concurrency bound, ack, stop gracefully."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol

from .drivers.backend import ResultBackend
from .drivers.broker import Broker, Consumer, Delivery
from .heartbeat import HEARTBEAT_INTERVAL, Heartbeat, registry_of
from .log import get_logger
from .middleware import (
    ErrorHandler,
    ErrorHandlerMiddleware,
    Middleware,
    Middlewares,
    PostTaskHandler,
    PreTaskHandler,
    SignatureHandler,
)
from .publisher import Publisher
from .ratelimit import LocalRateLimiter
from .revoke import Revocations
from .runner import Action, TaskRunner
from .tasks import TaskFunction

__all__ = ["BackgroundService", "Worker"]

logger = get_logger("machinery_aio.worker")

UNLIMITED_IN_FLIGHT = 1000
"""With ``concurrency=0`` (unlimited), at most this many tasks are fetched at once."""
MAX_BATCH = 100
"""At most this many messages are claimed in one fetch."""


async def _cancel_all(tasks: list[asyncio.Task[Any]], rounds: int = 50) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again if a cancellation was swallowed.

    On Python 3.11, ``asyncio.wait_for`` (used inside client libraries) can drop a
    ``cancel()`` that arrives as its inner future completes.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    if pending:
        logger.error("%d tasks ignored cancellation; leaving them running", len(pending))


class _Backoff:
    """Fibonacci back-off in seconds (1, 1, 2, 3, 5 ...) capped, reset on success."""

    def __init__(self, cap: float = 30.0) -> None:
        self.cap = cap
        self.reset()

    def reset(self) -> None:
        self._a, self._b = 0.5, 1.0

    def next(self) -> float:
        delay = self._a
        self._a, self._b = self._b, min(self.cap, self._a + self._b)
        return min(delay, self.cap)


class BackgroundService(Protocol):
    """Something a worker runs alongside consuming (the periodic scheduler, config reloads)."""

    async def run(self) -> None: ...


class Worker:
    """Consumes one queue and runs tasks, at most ``concurrency`` at a time.

    ``await worker.launch()`` runs until :meth:`quit` or SIGTERM/SIGINT (the
    first signal stops gracefully, a second one at once). ``async with worker:``
    runs it inside an application's own event loop, without signal handlers.
    ``server.new_worker(...)`` builds one; the arguments below are its options.

    Args:
        concurrency: tasks running at once; 1 runs them one by one, 0 means no
            limit besides the in-flight window of 1000.
        queue: the queue to consume; the config's ``default_queue`` if None.
        grace_period: seconds a graceful stop waits for running tasks before
            cancelling them (their messages are then redelivered).
        task_time_limit: default per-task time limit in seconds (None: none).
        executor: runs plain (non-async) task functions; a thread pool sized
            to the concurrency by default.
        unregistered_backoff: (first, longest) seconds before a task whose name
            no worker here knows is handed back; doubles each time per name.
        services: run alongside consuming while the worker runs.
        handle_signals: whether :meth:`launch` stops on SIGTERM/SIGINT.
        heartbeat_interval: seconds between the heartbeats that list this worker in
            ``machinery-aio inspect workers`` (None: no heartbeats).
    """

    def __init__(
        self,
        broker: Broker,
        backend: ResultBackend,
        publisher: Publisher,
        registry: Mapping[str, TaskFunction],
        tag: str = "",
        concurrency: int = 10,
        queue: str | None = None,
        *,
        middlewares: Middlewares | None = None,
        grace_period: float = 30.0,
        task_time_limit: float | None = None,
        executor: Executor | None = None,
        unregistered_backoff: tuple[float, float] = (1.0, 10.0),
        services: Sequence[BackgroundService] = (),
        handle_signals: bool = True,
        error_types: bool = False,
        heartbeat_interval: float | None = HEARTBEAT_INTERVAL,
    ) -> None:
        if concurrency < 0:
            raise ValueError("concurrency must be 0 (unlimited) or more")
        if grace_period < 0:
            raise ValueError("grace_period must not be negative")
        self.broker = broker
        self.tag = tag or f"worker-{id(self):x}"
        self.concurrency = concurrency
        self.queue = queue or broker.config.default_queue
        self.grace_period = grace_period
        self.unregistered_backoff = unregistered_backoff
        self.services = list(services)
        self.handle_signals = handle_signals
        keeper = registry_of(backend, broker) if heartbeat_interval else None
        self.heartbeat = None if keeper is None else Heartbeat(self, keeper, heartbeat_interval or 0)
        self.runner = TaskRunner(
            registry,
            backend,
            publisher,
            Middlewares(parent=middlewares),
            tag=self.tag,
            executor=executor,
            time_limit=task_time_limit,
            error_types=error_types,
        )
        self.revocations = Revocations(backend, self.runner.running)
        self.runner.revocations = self.revocations
        self.services.append(self.revocations)
        self._connect = publisher.connect
        self._own_executor = executor is None
        in_flight = concurrency or UNLIMITED_IN_FLIGHT
        self._slots = asyncio.Semaphore(in_flight)
        self.runner.slots = self._slots
        self.runner.max_local_waits = max(1, in_flight // 2)
        self.runner.limiter = broker.rate_limiter() or LocalRateLimiter()
        self._in_flight = in_flight
        self._running: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[Any]] = []
        self._error_handlers: list[ErrorHandler] = []
        self._consumer: Consumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._aborting = False
        self._started = False
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._unregistered: dict[str, tuple[float, float]] = {}  # name -> (delay, last log)

    # -- middlewares and Go's handlers -------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware for this worker's tasks only (after the server's)."""
        self.runner.middlewares.add(middleware)

    def set_error_handler(self, handler: ErrorHandler) -> None:
        """Go's ``SetErrorHandler``: called with ``(exception, signature)`` on a task's final
        failure, and with ``(exception, None)`` on broker errors."""
        self.runner.middlewares.add(ErrorHandlerMiddleware(handler))
        self._error_handlers.append(handler)

    def set_pre_task_handler(self, handler: SignatureHandler) -> None:
        """Go's ``SetPreTaskHandler``: called with the signature right before the task runs."""
        self.runner.middlewares.add(PreTaskHandler(handler))

    def set_post_task_handler(self, handler: SignatureHandler) -> None:
        """Go's ``SetPostTaskHandler``: called with the signature right after the task ran."""
        self.runner.middlewares.add(PostTaskHandler(handler))

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running_tasks(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Connect and start consuming in the background; returns at once."""
        if self._started:
            return
        self._started = True
        await self._connect()
        if self.runner.executor is None:
            self.runner.executor = ThreadPoolExecutor(
                max_workers=min(self._in_flight, 64), thread_name_prefix=f"{self.tag}-task"
            )
        self._consumer = self.broker.consumer(self.queue, prefetch=self._in_flight, tag=self.tag)
        self._loop_task = asyncio.create_task(self._consume(), name=f"{self.tag}-consume")
        for service in [*self.services, *([self.heartbeat] if self.heartbeat else [])]:
            self._background.append(asyncio.create_task(service.run()))
        logger.info(
            "worker %s consuming %r on %s (concurrency %s), results in %s",
            self.tag,
            self.queue,
            self.broker.describe(),
            self.concurrency or "unlimited",
            self.runner.backend.describe(),
        )

    async def launch(self) -> None:
        """Run until :meth:`quit` or SIGTERM/SIGINT; the second signal stops at once."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            logger.warning("second %s: stopping at once; unfinished tasks will be redelivered", sig.name)
            self.abort()
        else:
            logger.info("%s: stopping gracefully (send it again to stop at once)", sig.name)
            self.quit()

    def quit(self) -> None:
        """Stop gracefully: finish running tasks within the grace period, hand back the rest."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self.stop())

    def abort(self) -> None:
        """Stop at once: cancel running tasks; their messages go back to the queue."""
        self._aborting = True
        for task in list(self._running):
            task.cancel()
        self.quit()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop fetching, wait up to ``grace_period`` s for running tasks, then close."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._loop_task is not None:
            await _cancel_all([self._loop_task])
        grace = self.grace_period if grace_period is None else grace_period
        if self._running and not self._aborting:
            logger.info("waiting up to %g s for %d running tasks", grace, len(self._running))
            await asyncio.wait(set(self._running), timeout=grace)
        if self._running:
            logger.warning("cancelling %d unfinished tasks; they will be redelivered", len(self._running))
            await _cancel_all(list(self._running))
        await _cancel_all(self._background)
        if self._consumer is not None:
            try:
                await self._consumer.close()
            except Exception:
                logger.exception("closing the consumer failed; unacked messages will be redelivered")
        if self._own_executor and self.runner.executor is not None:
            self.runner.executor.shutdown(wait=False, cancel_futures=True)
        logger.info("worker %s stopped", self.tag)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- consuming -----------------------------------------------------------------

    async def _reserve(self) -> int:
        """Wait for one free slot, then take any others free now (up to MAX_BATCH)."""
        await self._slots.acquire()
        taken = 1
        while taken < MAX_BATCH and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    def _unreserve(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        backoff = _Backoff()
        while not self._stopping:
            reserved = await self._reserve()
            try:
                deliveries = await consumer.fetch(reserved)
            except asyncio.CancelledError:
                self._unreserve(reserved)
                raise
            except Exception as exc:
                self._unreserve(reserved)
                delay = backoff.next()
                logger.error(
                    "fetching from %s failed: %s; retrying in %.1f s",
                    self.broker.describe(),
                    exc,
                    delay,
                )
                await self._report(exc)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._unreserve(reserved - len(deliveries))
            if self._stopping:
                self._unreserve(len(deliveries))
                await consumer.release(deliveries)
                return
            for delivery in deliveries:
                task = asyncio.create_task(self._handle(consumer, delivery))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _handle(self, consumer: Consumer, delivery: Delivery) -> None:
        try:
            try:
                outcome = await self.runner.process(delivery.body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.error(
                    "could not process a message from %r: %s; handing it back",
                    delivery.queue,
                    exc,
                    exc_info=True,
                )
                await self._report(exc)
                await self._safely(consumer.requeue(delivery, 1.0))
                return
            if outcome.action is Action.ACK:
                await self._safely(consumer.ack(delivery))
            elif outcome.action is Action.DEAD_LETTER:
                await self._safely(consumer.dead_letter(delivery, outcome.reason))
            elif outcome.action is Action.REQUEUE:
                await self._safely(consumer.requeue(delivery, outcome.delay))
            elif outcome.action is Action.KEEP:
                await self._safely(consumer.keep(delivery))
            else:
                await self._hand_back(consumer, delivery, outcome.task_name)
        finally:
            self._slots.release()

    async def _hand_back(self, consumer: Consumer, delivery: Delivery, name: str) -> None:
        """A task whose name is not registered here goes back to the broker, to be delivered
        again after a delay that grows per name (never a hot loop); the broker holds it
        meanwhile, so it takes no slot and survives a crash."""
        base, cap = self.unregistered_backoff
        delay, last_log = self._unregistered.get(name, (base, 0.0))
        now = time.monotonic()
        if now - last_log > 60:
            logger.warning(
                "task %r is not registered on worker %s; handing it back for another worker "
                "(again in %.1f s; `machinery-aio inspect pending` lists it; "
                "IgnoreWhenTaskNotRegistered drops such tasks)",
                name,
                self.tag,
                delay,
            )
            last_log = now
        self._unregistered[name] = (min(cap, delay * 2), last_log)
        await self._safely(consumer.requeue(delivery, 0.0 if self._stopping else delay))

    async def _safely(self, call: Any) -> None:
        try:
            await call
        except Exception as exc:
            logger.error("broker operation failed: %s; the message will be redelivered", exc)
            await self._report(exc)

    async def _report(self, exc: BaseException) -> None:
        for handler in self._error_handlers:
            try:
                result = handler(exc, None)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("error handler failed")

    def __repr__(self) -> str:
        return f"<Worker {self.tag} queue={self.queue!r} concurrency={self.concurrency}>"
