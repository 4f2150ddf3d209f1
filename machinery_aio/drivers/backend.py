"""The result backend interface: task states, group metadata, chord triggering."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..signature import Signature
from ..state import GroupMeta, State, TaskResult, TaskState

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["ResultBackend"]


class ResultBackend(ABC):
    """Stores TaskState and GroupMeta records under the task and group UUIDs.

    Implementations keep ``task_name`` and ``created_at`` from the PENDING
    record when later states arrive without them (as Go's Redis backend does),
    make :meth:`trigger_chord` atomic, and may override :meth:`wait_for_state`
    to wake waiters without polling.
    """

    scheme: ClassVar[str] = ""
    stores_results: ClassVar[bool] = True

    def __init__(self, config: Config, url: str | None = None) -> None:
        self.config = config
        self.url = url or config.result_backend

    @property
    def expires_in(self) -> int:
        """Seconds a record lives: ``results_expire_in``, or Go's 3600 when it is 0."""
        return self.config.results_expire_in or 3600

    async def connect(self) -> None:
        """Open connections; called before first use. Must be idempotent."""

    async def close(self) -> None:
        """Close connections."""

    # -- writes ------------------------------------------------------------------

    @abstractmethod
    async def set_state(self, state: TaskState) -> None:
        """Store ``state`` under its task UUID, resetting the expiry."""

    async def set_states(self, states: Sequence[TaskState]) -> None:
        """Store several states, one task's in the order given; backends that can batch
        override this."""
        by_task: dict[str, list[TaskState]] = {}
        for state in states:
            by_task.setdefault(state.task_uuid, []).append(state)

        async def in_order(task_states: list[TaskState]) -> None:
            for state in task_states:
                await self.set_state(state)

        await asyncio.gather(*(in_order(s) for s in by_task.values()))

    def set_states_soon(self, states: Sequence[TaskState]) -> Awaitable[Any] | None:
        """Start storing one task's PENDING, or its RECEIVED and STARTED, without waiting;
        await the result for the outcome. Only a backend whose records cannot then go out
        of order does this: a PENDING must not replace the worker's first state, RECEIVED
        or STARTED must not replace SUCCESS or FAILURE. The others return None and the
        caller awaits :meth:`set_states` instead.
        """
        return None

    @abstractmethod
    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Write the group's GroupMeta (member UUIDs in group order)."""

    # -- reads -------------------------------------------------------------------

    @abstractmethod
    async def get_state(self, task_uuid: str) -> TaskState | None:
        """The latest state, or None if nothing is stored (unknown or expired)."""

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        return list(await asyncio.gather(*(self.get_state(u) for u in task_uuids)))

    @abstractmethod
    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        """The group's GroupMeta, or None."""

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        """True when ``group_task_count`` members are SUCCESS or FAILURE."""
        meta = await self.get_group_meta(group_uuid)
        if meta is None:
            return False
        states = await self.get_states(meta.task_uuids)
        done = sum(1 for s in states if s is not None and s.is_completed())
        return done == group_task_count

    async def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """Every member's state in group order; raises if a record is missing."""
        meta = await self.get_group_meta(group_uuid)
        if meta is None:
            raise LookupError(f"group {group_uuid} has no metadata")
        states = await self.get_states(meta.task_uuids)
        missing = [u for u, s in zip(meta.task_uuids, states, strict=True) if s is None]
        if missing:
            raise LookupError(f"group {group_uuid}: no state for {', '.join(missing)}")
        return [s for s in states if s is not None]

    @abstractmethod
    async def trigger_chord(self, group_uuid: str) -> bool:
        """Atomically mark the group's chord as triggered; True for exactly one caller."""

    # -- waiting and cleanup -------------------------------------------------------

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        """Wait until the task is SUCCESS or FAILURE and return that state.

        Raises TimeoutError. This default polls every ``interval`` s; backends
        that can be notified override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = await self.get_state(task_uuid)
            if state is not None and state.is_completed():
                return state
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"task {task_uuid} did not complete within {timeout} s")
                await asyncio.sleep(min(interval, left))
            else:
                await asyncio.sleep(interval)

    @abstractmethod
    async def purge_state(self, task_uuid: str) -> None:
        """Delete the task's state."""

    @abstractmethod
    async def purge_group_meta(self, group_uuid: str) -> None:
        """Delete the group's metadata."""

    # -- Go Machinery's per-state helpers -------------------------------------------

    async def set_state_pending(self, signature: Signature) -> None:
        await self.set_state(TaskState.new(signature, State.PENDING))

    async def set_state_received(self, signature: Signature) -> None:
        await self.set_state(TaskState.new(signature, State.RECEIVED))

    async def set_state_started(self, signature: Signature) -> None:
        await self.set_state(TaskState.new(signature, State.STARTED))

    async def set_state_retry(self, signature: Signature) -> None:
        await self.set_state(TaskState.new(signature, State.RETRY))

    async def set_state_success(self, signature: Signature, results: list[TaskResult]) -> None:
        await self.set_state(TaskState.new(signature, State.SUCCESS, results=results))

    async def set_state_failure(self, signature: Signature, error: str) -> None:
        await self.set_state(TaskState.new(signature, State.FAILURE, error=error))

    def describe(self) -> str:
        from ..urls import mask_url

        return mask_url(self.url)
