"""Run one message as Go Machinery's ``Worker.Process`` does, and say what to do with it.

decode -> registered? -> before_task -> check args -> RECEIVED, STARTED (one round trip)
-> call -> SUCCESS (OnSuccess callbacks, chord) | RETRY (re-publish, same UUID) |
FAILURE (OnError callbacks, chord error) -> after_task. The caller acks only
after this returns, so the final state is recorded before the message goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from . import gotime
from .context import TaskContext
from .counts import TaskCounts
from .drivers.backend import ResultBackend
from .errors import TaskRevokedError, TaskTimeLimitExceeded
from .gotypes import ArgTypeError
from .log import get_logger
from .middleware import Middlewares, TaskOutcome
from .progress import ProgressReporter
from .publisher import Publisher
from .ratelimit import LOCAL_WAIT, RateLimiter
from .retry import RetryTaskLater, fibonacci_next
from .revoke import REVOKED, TERMINATED, Revocations
from .signature import Arg, InvalidMessageError, Signature
from .state import State, TaskResult, TaskState
from .tasks import TaskFunction

__all__ = ["Action", "Outcome", "TaskRunner", "error_text"]

logger = get_logger("machinery_aio.worker")
events = get_logger("machinery_aio.tasks")
"""One line per task event (received, succeeded, retried, failed); INFO, WARNING for
retries after a failure, ERROR for failures."""

ETA_TOLERANCE = timedelta(seconds=1)
"""A message that arrives this much before its ETA goes back to the broker's delay."""


class Action(Enum):
    ACK = "ack"
    UNREGISTERED = "unregistered"
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"
    KEEP = "keep"
    """The task failed with ``StopTaskDeletionOnError``: leave the message to the broker."""


@dataclass(slots=True)
class Outcome:
    """What the worker does with the message."""

    action: Action
    reason: str = ""
    task_name: str = ""
    delay: float = 0.0


_ACK = Outcome(Action.ACK)
_KEEP = Outcome(Action.KEEP)


def error_text(exc: BaseException, with_type: bool = False) -> str:
    """The error text stored for a failure: the message alone, as Go stores ``err.Error()``
    (the type's name when there is no message); ``"ValueError: message"`` with ``with_type``.
    Never raises, even for exceptions that cannot be printed."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    if not message:
        return name
    return f"{name}: {message}" if with_type else message


class TaskRunner:
    """Processes message bodies for a worker.

    Args:
        registry: task name -> registered function.
        backend: where states are recorded.
        publisher: sends callbacks and chord callbacks, and re-publishes retries.
        middlewares: ``before_task`` / ``after_task`` hooks.
        tag: the worker's tag (in :class:`TaskContext`).
        executor: runs plain (non-async) functions; the loop's default if None.
        time_limit: default per-task time limit in seconds.
        error_types: store ``"ValueError: message"`` instead of Go's bare message.
    """

    def __init__(
        self,
        registry: Mapping[str, TaskFunction],
        backend: ResultBackend,
        publisher: Publisher,
        middlewares: Middlewares | None = None,
        *,
        tag: str = "",
        executor: Executor | None = None,
        time_limit: float | None = None,
        error_types: bool = False,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.publisher = publisher
        self.middlewares = middlewares if middlewares is not None else Middlewares()
        self.tag = tag
        self.executor = executor
        self.time_limit = time_limit
        self.error_types = error_types
        self.counts = TaskCounts()
        self.running: dict[str, _Run] = {}
        """Task UUID -> its run in progress, for revocations with ``terminate``."""
        self.revocations: Revocations | None = None
        self.limiter: RateLimiter | None = None
        """Gives rate-limited tasks their start times (set by the worker)."""
        self.slots: asyncio.Semaphore | None = None
        """The worker's concurrency slots: a rate-limited task gives its own back while it waits."""
        self.max_local_waits = 1
        """Rate-limited runs that may wait in the worker at once (the others wait in the broker)."""
        self._local_waits = 0

    async def process(self, body: bytes) -> Outcome:
        try:
            sig = Signature.from_json(body)
        except InvalidMessageError as exc:
            return await self._invalid_message(exc)
        function = self.registry.get(sig.name)
        if function is None:
            if sig.ignore_when_task_not_registered:
                logger.warning(
                    "dropping %s %s: not registered (IgnoreWhenTaskNotRegistered)", sig.name, sig.uuid
                )
                return _ACK
            return Outcome(Action.UNREGISTERED, task_name=sig.name)
        if (revocations := self.revocations) is not None:
            revoked = revocations.check(sig.uuid)
            if revoked is None:
                revoked = await revocations.read(sig.uuid)
            if revoked:
                return await _Run(self, function, sig).skip_revoked()
        if sig.eta is not None and sig.eta > gotime.now() + ETA_TOLERANCE:
            # Never hold an unacked message until its ETA: hand it back to the broker's delay.
            await self.publisher.republish(sig)
            return _ACK
        if sig.eta is not None and (early := (sig.eta - gotime.now()).total_seconds()) > 0:
            await asyncio.sleep(early)  # due within the tolerance: wait here rather than run early
        if function.rate_limit is not None and (limited := await self._rate_limited(sig, function)):
            return limited
        run = _Run(self, function, sig)
        return await run.go()

    async def _rate_limited(self, sig: Signature, function: TaskFunction) -> Outcome | None:
        """None when the task may start now (waiting here first if its turn is near);
        otherwise the outcome that hands it back to the broker until its turn."""
        limiter, rate = self.limiter, function.rate_limit
        if limiter is None or rate is None:
            return None
        while (wait := await limiter.acquire(sig.name, rate, sig.uuid)) > 0:
            local = LOCAL_WAIT if self._local_waits < self.max_local_waits else 0.0
            if wait > local:
                return Outcome(Action.REQUEUE, f"rate limit {rate}", sig.name, wait)
            await self._wait_without_slot(wait)
        return None

    async def _wait_without_slot(self, seconds: float) -> None:
        """Sleep ``seconds`` while another task uses this one's concurrency slot."""
        slots = self.slots
        self._local_waits += 1
        try:
            if slots is None:
                await asyncio.sleep(seconds)
                return
            slots.release()
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                # The worker is stopping: take the slot back if it is free, never wait for it.
                if not slots.locked():
                    await slots.acquire()
                raise
            await slots.acquire()
        finally:
            self._local_waits -= 1

    async def _invalid_message(self, exc: InvalidMessageError) -> Outcome:
        logger.error("invalid message set aside: %s", exc.reason)
        if exc.task_uuid:
            state = TaskState(
                task_uuid=exc.task_uuid, task_name=exc.task_name, state=State.FAILURE, error=exc.reason
            )
            await self.backend.set_state(state)
        return Outcome(Action.DEAD_LETTER, exc.reason, exc.task_name)


class _Run:
    """One run of one task: the steps of :meth:`TaskRunner.process` after the checks."""

    __slots__ = (
        "cancellable",
        "ctx",
        "failed",
        "function",
        "hooked",
        "revoked",
        "runner",
        "sig",
        "started",
        "task",
    )

    def __init__(self, runner: TaskRunner, function: TaskFunction, sig: Signature) -> None:
        self.runner = runner
        self.function = function
        self.sig = sig
        self.hooked = runner.middlewares.running
        self.ctx: TaskContext | None = None
        self.started = time.perf_counter()
        self.failed = False
        self.revoked = False
        self.cancellable = False
        self.task: asyncio.Task[Any] | None = None

    def terminate(self) -> None:
        """Revoked while running: cancel a coroutine now; a plain function's thread cannot
        be stopped, so its result is discarded when it ends."""
        if self.revoked:
            return
        self.revoked = True
        if self.cancellable and self.task is not None:
            self.task.cancel()

    async def skip_revoked(self) -> Outcome:
        """The task was revoked before it ran: record that and run its error callbacks."""
        events.warning("%s[%s] revoked: not run", self.sig.name, self.sig.uuid)
        await self._record_failure(REVOKED)
        self._finish(State.FAILURE, REVOKED)
        return _ACK

    def context(self) -> TaskContext:
        if self.ctx is None:
            self.ctx = TaskContext(self.sig, self.runner.tag)
            self.ctx._progress = ProgressReporter(self.runner.backend, self.sig).report
        return self.ctx

    async def go(self) -> Outcome:
        sig, runner = self.sig, self.runner
        backend = runner.backend
        if self.hooked:
            await runner.middlewares.before_task(self.context())
        if events.isEnabledFor(logging.INFO):
            events.info("received %s[%s]", sig.name, sig.uuid)
        try:
            args = self.function.convert_args(sig.python_args())
        except ArgTypeError as exc:
            reason = f"bad arguments for task {sig.name}: {exc}"
            await backend.set_state(TaskState.new(sig, State.RECEIVED))
            await self._failed(reason, exc)
            return Outcome(Action.DEAD_LETTER, reason, sig.name)
        states = (TaskState.new(sig, State.RECEIVED), TaskState.new(sig, State.STARTED))
        started = await backend.set_states_soon(states)  # the task need not wait for the write
        running = runner.running
        running[sig.uuid] = self
        try:
            await self._run(args, started)
        finally:
            if running.get(sig.uuid) is self:
                del running[sig.uuid]
            await _recorded(started, sig)
        return _KEEP if self.failed and sig.stop_task_deletion_on_error else _ACK

    async def _run(self, args: list[Any], started: Awaitable[Any]) -> None:
        sig = self.sig
        try:
            if self.revoked:  # revoked (terminate) between its start and now
                raise asyncio.CancelledError
            if self.function.is_async:
                self.task = asyncio.current_task()
                self.cancellable = True
            try:
                value = await self._invoke(args)
            finally:
                self.cancellable = False
            if self.revoked:
                raise asyncio.CancelledError
            results = self.function.to_results(value)
        except RetryTaskLater as exc:
            await _recorded(started, sig)  # RETRY is not final: STARTED must not follow it
            await self._retry_later(exc)
        except asyncio.CancelledError:
            if not self.revoked:
                raise
            if self.task is not None:
                self.task.uncancel()
            await _recorded(started, sig)
            await self._failed(TERMINATED, TaskRevokedError(sig.uuid, TERMINATED, sig.name))
        except (Exception, SystemExit) as exc:  # a task's sys.exit() fails only the task
            if sig.retry_count > 0:
                await _recorded(started, sig)
            await self._errored(exc)
        else:
            await self._succeeded(results, value)

    async def _invoke(self, args: list[Any]) -> Any:
        function, sig = self.function, self.sig
        if function.takes_context:
            args = [self.context(), *args]
        limit = function.time_limit or self.runner.time_limit
        if function.is_async:
            awaitable: Awaitable[Any] = function.fn(*args)
        else:
            loop = asyncio.get_running_loop()
            call = functools.partial(contextvars.copy_context().run, function.fn, *args)
            awaitable = loop.run_in_executor(self.runner.executor, call)
        if limit is None:
            value = await awaitable
        else:
            try:
                async with asyncio.timeout(limit) as scope:
                    value = await awaitable
            except TimeoutError:
                if scope.expired():
                    kind = "" if function.is_async else " (its thread cannot be stopped)"
                    raise TaskTimeLimitExceeded(
                        f"task {sig.name} exceeded its time limit of {limit:g} s and was cancelled{kind}"
                    ) from None
                raise
            when = scope.when()
            if when is not None and asyncio.get_running_loop().time() > when:
                # The task blocked the event loop past its limit, so it could not be cancelled.
                raise TaskTimeLimitExceeded(
                    f"task {sig.name} exceeded its time limit of {limit:g} s "
                    f"(it blocked the event loop, so it could not be cancelled)"
                )
        if inspect.isawaitable(value):
            value = await value
        return value

    # -- outcomes --------------------------------------------------------------------

    def _finish(self, state: State, error: str = "") -> float:
        """Count the run's outcome (and keep a failure's note); returns the run's duration."""
        self.runner.counts.add(state)
        if state is State.FAILURE:
            self.runner.counts.note_failure(self.sig.uuid, self.sig.name, error)
        return time.perf_counter() - self.started

    async def _after_task(
        self,
        duration: float,
        state: State,
        error: str | None = None,
        exc: BaseException | None = None,
        value: Any = None,
    ) -> None:
        """Tell the middlewares how the run ended."""
        values = [] if value is None else list(value) if isinstance(value, tuple) else [value]
        outcome = TaskOutcome(state, values, error, exc, duration)
        await self.runner.middlewares.after_task(self.context(), outcome)

    async def _succeeded(self, results: list[TaskResult], value: Any) -> None:
        sig, runner = self.sig, self.runner
        await runner.backend.set_final_state(sig, TaskState.new(sig, State.SUCCESS, results=results))
        for callback in sig.on_success or ():
            if not sig.immutable:
                extra = [Arg(type=r.type, value=r.value) for r in results]
                callback.args = [*(callback.args or ()), *extra]
            await runner.publisher.send_task(callback)
        if sig.group_uuid and sig.chord_callback is not None:
            await _member_done(runner, sig)
        duration = self._finish(State.SUCCESS)
        if self.hooked:
            await self._after_task(duration, State.SUCCESS, value=value)
        if events.isEnabledFor(logging.INFO):
            events.info("%s[%s] succeeded in %.6fs", sig.name, sig.uuid, duration)

    async def _retry_later(self, exc: RetryTaskLater) -> None:
        sig, runner = self.sig, self.runner
        await runner.backend.set_state(TaskState.new(sig, State.RETRY))
        sig.eta = gotime.now() + timedelta(seconds=exc.delay)
        await runner.publisher.republish(sig)
        duration = self._finish(State.RETRY)
        if self.hooked:
            await self._after_task(duration, State.RETRY, exc.msg, exc)
        events.info(
            "%s[%s] retry in %g s (RetryTaskLater after %.6fs): %s",
            sig.name,
            sig.uuid,
            exc.delay,
            duration,
            exc.msg,
        )

    async def _errored(self, exc: BaseException) -> None:
        sig, runner = self.sig, self.runner
        text = error_text(exc, runner.error_types)
        if sig.retry_count > 0:
            await runner.backend.set_state(TaskState.new(sig, State.RETRY))
            sig.retry_count -= 1
            sig.retry_timeout = fibonacci_next(sig.retry_timeout)
            sig.eta = gotime.now() + timedelta(seconds=sig.retry_timeout)
            await runner.publisher.republish(sig)
            duration = self._finish(State.RETRY)
            if self.hooked:
                await self._after_task(duration, State.RETRY, text, exc)
            events.warning(
                "%s[%s] failed in %.6fs: %s; retrying in %d s (%d retries left)",
                sig.name,
                sig.uuid,
                duration,
                error_text(exc, True),
                sig.retry_timeout,
                sig.retry_count,
            )
            return
        await self._failed(text, exc)

    async def _record_failure(self, text: str) -> None:
        """Store FAILURE, send the error callbacks, and fire the chord if this was its last member."""
        sig, runner = self.sig, self.runner
        self.failed = True
        await runner.backend.set_final_state(sig, TaskState.new(sig, State.FAILURE, error=text))
        for callback in sig.on_error or ():
            callback.args = [Arg(type="string", value=text), *(callback.args or ())]
            await runner.publisher.send_task(callback)
        if sig.group_uuid and sig.chord_callback is not None:
            await _member_done(runner, sig)

    async def _failed(self, text: str, exc: BaseException) -> None:
        sig = self.sig
        await self._record_failure(text)
        duration = self._finish(State.FAILURE, text)
        if self.hooked:
            await self._after_task(duration, State.FAILURE, text, exc)
        unexpected = not isinstance(exc, TaskTimeLimitExceeded | ArgTypeError | TaskRevokedError)
        events.error(
            "%s[%s] failed in %.6fs: %s",
            sig.name,
            sig.uuid,
            duration,
            error_text(exc, True),
            exc_info=exc if unexpected else None,
        )


async def _recorded(started: Awaitable[Any], sig: Signature) -> None:
    """Wait for the RECEIVED/STARTED write; its failure alone loses nothing."""
    try:
        await started
    except Exception as exc:
        logger.warning("could not record %s %s as STARTED: %s", sig.name, sig.uuid, exc)


async def _member_done(runner: TaskRunner, sig: Signature) -> None:
    """Send the chord callback if this was the group's last member (exactly once)."""
    backend = runner.backend
    callback = sig.chord_callback
    assert callback is not None
    if not await backend.group_completed(sig.group_uuid, sig.group_task_count):
        return
    if not await backend.trigger_chord(sig.group_uuid):
        return
    try:
        states = await backend.group_task_states(sig.group_uuid, sig.group_task_count)
    except LookupError as exc:
        # The records expired or were purged: the callback can never get its results.
        states, missing = [], str(exc)
    else:
        missing = ""
    failed = [s for s in states if not s.is_success()]
    if failed or missing:
        text = (
            (
                f"chord {sig.group_uuid}: {len(failed)} of {len(states)} members failed; "
                f"first {failed[0].task_uuid}: {failed[0].error}"
            )
            if failed
            else missing
        )
        logger.error("%s; callback %s not sent", text, callback.name)
        if callback.uuid:
            await backend.set_state(TaskState.new(callback, State.FAILURE, error=text))
        for on_error in callback.on_error or ():
            on_error.args = [Arg(type="string", value=text), *(on_error.args or ())]
            await runner.publisher.send_task(on_error)
        return
    if not callback.immutable:
        extra = [Arg(type=r.type, value=r.value) for s in states for r in s.results or ()]
        callback.args = [*(callback.args or ()), *extra]
    await runner.publisher.send_task(callback)
