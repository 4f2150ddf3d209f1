"""The worker: fetch from the broker, run under a concurrency bound, ack, stop gracefully."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .drivers.broker import Consumer, Delivery
from .log import get_logger
from .runner import Action, ErrorHandler, Hooks, SignatureHook, TaskRunner, _call_hook

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Worker"]

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


class Worker:
    """Consumes one queue and runs tasks, at most ``concurrency`` at a time.

    ``await worker.launch()`` runs until :meth:`quit` or SIGTERM/SIGINT (the
    first signal stops gracefully, a second one at once). ``async with worker:``
    runs it inside an application's own event loop, without signal handlers.

    Args:
        concurrency: tasks running at once; 1 runs them one by one, 0 means no
            limit besides the in-flight window of 1000.
        queue: the queue to consume; the config's ``default_queue`` if None.
        grace_period: seconds a graceful stop waits for running tasks before
            cancelling them (their messages are then redelivered).
        task_time_limit: default per-task time limit in seconds (None: none).
        executor: runs plain (non-async) task functions; a thread pool sized
            to the concurrency by default.
    """

    def __init__(
        self,
        server: Server,
        tag: str = "",
        concurrency: int = 10,
        queue: str | None = None,
        *,
        grace_period: float = 30.0,
        task_time_limit: float | None = None,
        executor: Executor | None = None,
        fetch_timeout: float | None = None,
        unregistered_backoff: tuple[float, float] = (1.0, 10.0),
        run_scheduler: bool = True,
    ) -> None:
        if concurrency < 0:
            raise ValueError("concurrency must be 0 (unlimited) or more")
        if grace_period < 0:
            raise ValueError("grace_period must not be negative")
        self.server = server
        self.tag = tag or f"worker-{id(self):x}"
        self.concurrency = concurrency
        self.queue = queue or server.config.default_queue
        self.grace_period = grace_period
        self.fetch_timeout = fetch_timeout
        self.unregistered_backoff = unregistered_backoff
        self.run_scheduler = run_scheduler
        self.hooks = Hooks()
        self._own_executor = executor is None
        self._executor = executor
        self._task_time_limit = task_time_limit
        in_flight = concurrency or UNLIMITED_IN_FLIGHT
        self._slots = asyncio.Semaphore(in_flight)
        self._holds = asyncio.Semaphore(in_flight)
        self._in_flight = in_flight
        self._running: set[asyncio.Task[None]] = set()
        self._holding: set[asyncio.Task[Any]] = set()  # unregistered tasks waiting out a back-off
        self._background: list[asyncio.Task[Any]] = []
        self._consumer: Consumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._aborting = False
        self._started = False
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._unregistered: dict[str, tuple[float, float]] = {}  # name -> (delay, last log)
        self.runner: TaskRunner | None = None

    # -- hooks (Go's Set*Handler) -------------------------------------------------

    def set_error_handler(self, handler: ErrorHandler) -> None:
        """Called with ``(exception, signature)`` on a task's final failure, and with
        ``(exception, None)`` on broker errors."""
        self.hooks.error.append(handler)

    def set_pre_task_handler(self, handler: SignatureHook) -> None:
        """Called with the signature right before the task function runs."""
        self.hooks.pre_task.append(handler)

    def set_post_task_handler(self, handler: SignatureHook) -> None:
        """Called with the signature right after the task function returns or raises."""
        self.hooks.post_task.append(handler)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def running_tasks(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Connect and start consuming in the background; returns at once."""
        if self._started:
            return
        self._started = True
        server = self.server
        await server.connect()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=min(self._in_flight, 64), thread_name_prefix=f"{self.tag}-task"
            )
        self.runner = TaskRunner(
            server,
            tag=self.tag,
            hooks=self.hooks,
            executor=self._executor,
            time_limit=self._task_time_limit,
        )
        self._consumer = server.broker.consumer(self.queue, prefetch=self._in_flight, tag=self.tag)
        self._loop_task = asyncio.create_task(self._consume(), name=f"{self.tag}-consume")
        if server.config.reloads:
            self._background.append(asyncio.create_task(server.config.keep_reloading()))
        if self.run_scheduler:
            scheduler = server.scheduler_for_worker()
            if scheduler is not None:
                self._background.append(asyncio.create_task(scheduler.run()))
        logger.info(
            "worker %s consuming %r on %s (concurrency %s), results in %s",
            self.tag,
            self.queue,
            server.broker.describe(),
            self.concurrency or "unlimited",
            server.backend.describe(),
        )

    async def launch(self) -> None:
        """Run until :meth:`quit` or SIGTERM/SIGINT; the second signal stops at once."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if not self.server.config.no_unix_signals:
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
        for task in list(self._holding):
            task.cancel()  # held unregistered messages go back to the queue at once
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
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
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

    def _fetch_timeout(self) -> float:
        if self.fetch_timeout is not None:
            return self.fetch_timeout
        return max(0.1, self.server.config.redis.normal_tasks_poll_period / 1000)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        backoff = _Backoff()
        while not self._stopping:
            reserved = await self._reserve()
            try:
                deliveries = await consumer.fetch(reserved, self._fetch_timeout())
            except asyncio.CancelledError:
                self._unreserve(reserved)
                raise
            except Exception as exc:
                self._unreserve(reserved)
                delay = backoff.next()
                logger.error(
                    "fetching from %s failed: %s; retrying in %.1f s",
                    self.server.broker.describe(),
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
        released = False
        try:
            assert self.runner is not None
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
            else:
                await self._holds.acquire()
                self._slots.release()
                released = True
                try:
                    await self._hand_back(consumer, delivery, outcome.task_name)
                finally:
                    self._holds.release()
        finally:
            if not released:
                self._slots.release()

    async def _hand_back(self, consumer: Consumer, delivery: Delivery, name: str) -> None:
        """An unregistered task goes back to the queue after a growing delay, never in a hot loop."""
        base, cap = self.unregistered_backoff
        delay, last_log = self._unregistered.get(name, (base, 0.0))
        now = time.monotonic()
        if now - last_log > 60:
            logger.warning(
                "task %r is not registered on worker %s; handing it back "
                "(next in %.1f s; IgnoreWhenTaskNotRegistered drops such tasks)",
                name,
                self.tag,
                delay,
            )
            last_log = now
        self._unregistered[name] = (min(cap, delay * 2), last_log)
        if self._stopping:
            return  # still held: closing the consumer hands it back
        holder = asyncio.current_task()
        assert holder is not None
        self._holding.add(holder)
        try:
            await asyncio.sleep(delay)
        finally:
            self._holding.discard(holder)
        await self._safely(consumer.requeue(delivery, 0.0))

    async def _safely(self, call: Any) -> None:
        try:
            await call
        except Exception as exc:
            logger.error("broker operation failed: %s; the message will be redelivered", exc)
            await self._report(exc)

    async def _report(self, exc: BaseException) -> None:
        for handler in self.hooks.error:
            try:
                await _call_hook(handler, exc, None)
            except Exception:
                logger.exception("error handler failed")

    def __repr__(self) -> str:
        return f"<Worker {self.tag} queue={self.queue!r} concurrency={self.concurrency}>"
