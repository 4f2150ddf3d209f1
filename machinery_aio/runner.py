"""Run one message as Go Machinery's ``Worker.Process`` does, and say what to do with it.

decode -> registered? -> check args -> RECEIVED, STARTED (one round trip) -> pre hook -> call
-> SUCCESS (OnSuccess callbacks, chord) | RETRY (re-publish, same UUID) |
FAILURE (OnError callbacks, chord error) -> post hook. The caller acks only
after this returns, so the final state is recorded before the message goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from . import gotime
from .context import TaskContext
from .errors import TaskTimeLimitExceeded
from .gotypes import ArgTypeError
from .log import get_logger
from .retry import RetryTaskLater, fibonacci_next
from .signature import Arg, InvalidMessageError, Signature
from .state import State, TaskState
from .tasks import TaskFunction

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Action", "ErrorHandler", "Hooks", "Outcome", "TaskRunner", "error_text"]

logger = get_logger("machinery_aio.worker")

SignatureHook = Callable[[Signature], Any]
ErrorHandler = Callable[[BaseException, Signature | None], Any]

ETA_TOLERANCE = timedelta(seconds=1)
"""A message that arrives this much before its ETA goes back to the broker's delay."""


class Action(Enum):
    ACK = "ack"
    UNREGISTERED = "unregistered"
    DEAD_LETTER = "dead_letter"


@dataclass(slots=True)
class Outcome:
    action: Action
    reason: str = ""
    task_name: str = ""


_ACK = Outcome(Action.ACK)


@dataclass(slots=True)
class Hooks:
    """Worker hooks, as Go's SetPreTaskHandler/SetPostTaskHandler/SetErrorHandler."""

    pre_task: list[SignatureHook] = field(default_factory=list)
    post_task: list[SignatureHook] = field(default_factory=list)
    error: list[ErrorHandler] = field(default_factory=list)


async def _call_hook(hook: Callable[..., Any], *args: Any) -> None:
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


def error_text(exc: BaseException) -> str:
    """``"ValueError: message"``; never raises, even for exceptions that cannot be printed."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    return f"{name}: {message}" if message else name


class TaskRunner:
    """Processes message bodies for a worker."""

    def __init__(
        self,
        server: Server,
        *,
        tag: str,
        hooks: Hooks,
        executor: Executor | None = None,
        time_limit: float | None = None,
    ) -> None:
        self.server = server
        self.tag = tag
        self.hooks = hooks
        self.executor = executor
        self.time_limit = time_limit

    async def process(self, body: bytes) -> Outcome:
        try:
            sig = Signature.from_json(body)
        except InvalidMessageError as exc:
            return await self._invalid_message(exc)
        function = self.server.registry.get(sig.name)
        if function is None:
            if sig.ignore_when_task_not_registered:
                logger.warning(
                    "dropping %s %s: not registered (IgnoreWhenTaskNotRegistered)", sig.name, sig.uuid
                )
                return _ACK
            return Outcome(Action.UNREGISTERED, task_name=sig.name)
        if sig.eta is not None and sig.eta > gotime.now() + ETA_TOLERANCE:
            # Never hold an unacked message until its ETA: hand it back to the broker's delay.
            await self.server.republish(sig)
            return _ACK
        if sig.eta is not None and (early := (sig.eta - gotime.now()).total_seconds()) > 0:
            await asyncio.sleep(early)  # due within the tolerance: wait here rather than run early
        backend = self.server.backend
        try:
            args = function.convert_args(sig.python_args())
        except ArgTypeError as exc:
            reason = f"bad arguments for task {sig.name}: {exc}"
            logger.error("%s (%s)", reason, sig.uuid)
            await backend.set_state(TaskState.new(sig, State.RECEIVED))
            await self._failed(sig, reason, exc)
            return Outcome(Action.DEAD_LETTER, reason, sig.name)
        states = (TaskState.new(sig, State.RECEIVED), TaskState.new(sig, State.STARTED))
        started = backend.set_states_soon(states)  # the task need not wait for the write
        if started is None:
            await backend.set_states(states)
        try:
            await self._run(function, sig, args, started)
        finally:
            if started is not None:
                await self._recorded(started, sig)
        return _ACK

    @staticmethod
    async def _recorded(started: Awaitable[Any], sig: Signature) -> None:
        """Wait for the RECEIVED/STARTED write; its failure alone loses nothing."""
        try:
            await started
        except Exception as exc:
            logger.warning("could not record %s %s as STARTED: %s", sig.name, sig.uuid, exc)

    async def _run(
        self,
        function: TaskFunction,
        sig: Signature,
        args: list[Any],
        started: Awaitable[Any] | None = None,
    ) -> None:
        for hook in self.hooks.pre_task:
            try:
                await _call_hook(hook, sig)
            except Exception:
                logger.exception("pre-task handler failed for %s", sig.uuid)
        try:
            try:
                value = await self._invoke(function, sig, args)
                results = function.to_results(value)
            except RetryTaskLater as exc:
                if started is not None:  # RETRY is not final: STARTED must not follow it
                    await self._recorded(started, sig)
                await self._retry_later(sig, exc)
            except asyncio.CancelledError:
                raise
            except (Exception, SystemExit) as exc:  # a task's sys.exit() fails only the task
                if started is not None and sig.retry_count > 0:
                    await self._recorded(started, sig)
                await self._errored(sig, exc)
            else:
                await self._succeeded(sig, results)
        finally:
            for hook in self.hooks.post_task:
                try:
                    await _call_hook(hook, sig)
                except Exception:
                    logger.exception("post-task handler failed for %s", sig.uuid)

    async def _invoke(self, function: TaskFunction, sig: Signature, args: list[Any]) -> Any:
        if function.takes_context:
            ctx = TaskContext(
                sig, self.tag, logging.LoggerAdapter(logger, {"task_name": sig.name, "task_uuid": sig.uuid})
            )
            args = [ctx, *args]
        limit = function.time_limit or self.time_limit
        if function.is_async:
            awaitable: Awaitable[Any] = function.fn(*args)
        else:
            loop = asyncio.get_running_loop()
            call = functools.partial(contextvars.copy_context().run, function.fn, *args)
            awaitable = loop.run_in_executor(self.executor, call)
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

    async def _succeeded(self, sig: Signature, results: list[Any]) -> None:
        backend = self.server.backend
        await backend.set_state_success(sig, results)
        for callback in sig.on_success or ():
            if not sig.immutable:
                extra = [Arg(type=r.type, value=r.value) for r in results]
                callback.args = [*(callback.args or ()), *extra]
            await self.server.send_task(callback)
        if sig.group_uuid and sig.chord_callback is not None:
            await self._member_done(sig)

    async def _retry_later(self, sig: Signature, exc: RetryTaskLater) -> None:
        await self.server.backend.set_state(TaskState.new(sig, State.RETRY))
        sig.eta = gotime.now() + timedelta(seconds=exc.delay)
        logger.info("task %s %s: %s", sig.name, sig.uuid, exc)
        await self.server.republish(sig)

    async def _errored(self, sig: Signature, exc: BaseException) -> None:
        text = error_text(exc)
        if sig.retry_count > 0:
            await self.server.backend.set_state(TaskState.new(sig, State.RETRY))
            sig.retry_count -= 1
            sig.retry_timeout = fibonacci_next(sig.retry_timeout)
            sig.eta = gotime.now() + timedelta(seconds=sig.retry_timeout)
            logger.warning(
                "task %s %s failed: %s; retrying in %d s (%d retries left)",
                sig.name,
                sig.uuid,
                text,
                sig.retry_timeout,
                sig.retry_count,
            )
            await self.server.republish(sig)
            return
        logger.error(
            "task %s %s failed: %s",
            sig.name,
            sig.uuid,
            text,
            exc_info=not isinstance(exc, TaskTimeLimitExceeded),
        )
        await self._failed(sig, text, exc)

    async def _failed(self, sig: Signature, text: str, exc: BaseException) -> None:
        await self.server.backend.set_state_failure(sig, text)
        for handler in self.hooks.error:
            try:
                await _call_hook(handler, exc, sig)
            except Exception:
                logger.exception("error handler failed")
        for callback in sig.on_error or ():
            callback.args = [Arg(type="string", value=text), *(callback.args or ())]
            await self.server.send_task(callback)
        if sig.group_uuid and sig.chord_callback is not None:
            await self._member_done(sig)

    async def _member_done(self, sig: Signature) -> None:
        """Send the chord callback if this was the group's last member (exactly once)."""
        backend = self.server.backend
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
                await self.server.send_task(on_error)
            return
        if not callback.immutable:
            extra = [Arg(type=r.type, value=r.value) for s in states for r in s.results or ()]
            callback.args = [*(callback.args or ()), *extra]
        await self.server.send_task(callback)

    async def _invalid_message(self, exc: InvalidMessageError) -> Outcome:
        logger.error("invalid message set aside: %s", exc.reason)
        if exc.task_uuid:
            state = TaskState(
                task_uuid=exc.task_uuid, task_name=exc.task_name, state=State.FAILURE, error=exc.reason
            )
            await self.server.backend.set_state(state)
        return Outcome(Action.DEAD_LETTER, exc.reason, exc.task_name)
