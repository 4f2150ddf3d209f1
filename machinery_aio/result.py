"""Handles on sent tasks: wait for a result, read a state."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import TypeAdapter

from .errors import TaskFailedError, TaskRevokedError
from .revoke import is_revoked, revoke
from .signature import Signature
from .state import Progress, State, TaskState

if TYPE_CHECKING:
    from .drivers.backend import ResultBackend

__all__ = ["AsyncResult", "ChainAsyncResult", "ChordAsyncResult"]

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The result of one sent task.

    ``await result.get(timeout=5)`` returns the task's return value (a tuple for
    several results), raises :class:`TaskFailedError` if the task failed and
    ``TimeoutError`` if it did not finish in time.
    """

    def __init__(self, signature: Signature, backend: ResultBackend) -> None:
        self.signature = signature
        self.backend = backend
        self._adapter: TypeAdapter[Any] | None = None
        self._seen: Progress | None = None

    @property
    def task_uuid(self) -> str:
        return self.signature.uuid

    def typed(self, adapter: TypeAdapter[Any] | None) -> AsyncResult[Any]:
        """Convert the value returned by :meth:`get` with ``adapter`` (e.g. to a pydantic model)."""
        self._adapter = adapter
        return self

    async def get_state(self) -> TaskState:
        """The latest state; PENDING when nothing is stored yet."""
        state = await self.backend.get_state(self.task_uuid)
        if state is None:
            return TaskState(task_uuid=self.task_uuid, task_name=self.signature.name)
        return state

    async def wait_progress(self, timeout: float | None = None, interval: float = 0.1) -> TaskState:
        """Wait until the task reports progress other than the last seen here, or finishes,
        and return its state (``.progress``). Reads the state every ``interval`` s; raises
        TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = await self.get_state()
            if state.is_completed() or (state.progress is not None and state.progress != self._seen):
                self._seen = state.progress
                return state
            left = _remaining(deadline)
            if left is not None and left <= 0:
                raise TimeoutError(f"task {self.task_uuid} reported no progress within {timeout} s")
            await asyncio.sleep(interval if left is None else min(interval, left))

    async def touch(self) -> R | None:
        """The value if the task has finished, else None; raises if it failed."""
        state = await self.backend.get_state(self.task_uuid)
        if state is None or not state.is_completed():
            return None
        return self._value(state)

    async def revoke(self, terminate: bool = False) -> bool:
        """Revoke the task: if it has not started it never runs; with ``terminate`` a running
        coroutine is cancelled where it runs. :meth:`get` then raises TaskRevokedError.
        Returns False (changing nothing) if the task had already finished."""
        return await revoke(self.backend, self.task_uuid, terminate=terminate)

    async def get(self, timeout: float | None = None, interval: float = 0.05) -> R:
        """Wait for the task to finish and return its value.

        ``timeout`` None waits forever; ``interval`` is the polling period for
        backends that cannot notify.
        """
        state = await self.backend.wait_for_state(self.task_uuid, timeout, interval)
        return self._value(state)

    def _value(self, state: TaskState) -> R:
        if state.state is State.FAILURE:
            if is_revoked(state):
                raise TaskRevokedError(state.task_uuid, state.error, state.task_name)
            raise TaskFailedError(state.task_uuid, state.error, state.task_name)
        value = state.value
        if self._adapter is not None and value is not None:
            value = self._adapter.validate_python(value)
        return value  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<AsyncResult {self.signature.name} {self.task_uuid}>"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


class ChainAsyncResult:
    """The result of a chain: :meth:`get` waits for each link and returns the last value."""

    def __init__(self, results: list[AsyncResult[Any]]) -> None:
        self.results = results

    async def get(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        value: Any = None
        for result in self.results:
            try:
                value = await result.get(_remaining(deadline), interval)
            except TimeoutError:
                raise TimeoutError(f"chain did not complete within {timeout} s") from None
        return value

    async def get_states(self) -> list[TaskState]:
        return [await r.get_state() for r in self.results]

    async def revoke(self, terminate: bool = False) -> None:
        """Revoke every link: the chain stops where it is."""
        for result in self.results:
            await result.revoke(terminate)

    def __repr__(self) -> str:
        return f"<ChainAsyncResult of {len(self.results)}>"


class ChordAsyncResult:
    """The result of a chord: :meth:`get` waits for the members, then returns the callback's value."""

    def __init__(self, group_results: list[AsyncResult[Any]], callback: AsyncResult[Any]) -> None:
        self.group_results = group_results
        self.callback = callback

    async def get(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for result in self.group_results:
                await result.get(_remaining(deadline), interval)
            return await self.callback.get(_remaining(deadline), interval)
        except TimeoutError:
            raise TimeoutError(f"chord did not complete within {timeout} s") from None

    async def revoke(self, terminate: bool = False) -> None:
        """Revoke every member and the callback: the chord fails, its callback never runs."""
        for result in [*self.group_results, self.callback]:
            await result.revoke(terminate)

    def __repr__(self) -> str:
        return f"<ChordAsyncResult {len(self.group_results)} -> {self.callback.signature.name}>"
