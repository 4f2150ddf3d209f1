"""The result backend interface: task states, group metadata, chord triggering."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..gotime import ZERO_TIME
from ..signature import Signature
from ..state import GroupMeta, TaskState

if TYPE_CHECKING:
    from ..config import Config
    from .control import ControlChannel

__all__ = ["BackendCapabilities", "ResultBackend", "keep_origin"]


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a result backend can do, where backends differ."""

    in_process: bool = False
    """Records live in this process only (``memory://``): other processes cannot read them."""
    stores_results: bool = True
    """States can be read back (``null://`` stores nothing, so results cannot be awaited)."""


def keep_origin(state: TaskState, stored: TaskState | None) -> TaskState:
    """The rule every backend applies: a state written without a ``task_name`` or
    ``created_at`` (every state after PENDING, as in Go) keeps those of the stored record.

    Backends that merge in Python call this; the Redis backend does the same inside the
    Lua script that writes, so the merge and the write are one step.
    """
    if stored is None or (state.task_name and state.created_at != ZERO_TIME):
        return state
    merged = state.model_copy()
    merged.task_name = state.task_name or stored.task_name
    if state.created_at == ZERO_TIME:
        merged.created_at = stored.created_at
    return merged


class _Done:
    """An awaitable that is already finished (what :meth:`ResultBackend.set_states_soon`
    returns when the write happened before it returned)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once


DONE: Awaitable[None] = _Done()


class ResultBackend(ABC):
    """Stores TaskState and GroupMeta records under the task and group UUIDs.

    A driver implements the abstract methods; the others have working defaults
    built on them, which drivers override where they can do better (batching,
    server-side counting, notifications instead of polling).
    """

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities()

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
    async def set_states(self, states: Sequence[TaskState]) -> None:
        """Store several states, each under its task UUID (one task's in the order given),
        resetting the expiry. Each keeps the stored ``task_name`` and ``created_at`` when
        it has none (:func:`keep_origin`)."""

    async def set_state(self, state: TaskState) -> None:
        """Store one state (see :meth:`set_states`)."""
        await self.set_states((state,))

    async def set_states_soon(self, states: Sequence[TaskState]) -> Awaitable[None]:
        """Start storing one task's PENDING (at send), or its RECEIVED and STARTED (when a
        worker starts it); await the returned awaitable for the outcome.

        By default the states are stored before this returns. A backend may return
        earlier, so the write overlaps the publish or the task, only if it keeps the
        records in order without the caller waiting: a PENDING must not replace the
        worker's first state, RECEIVED or STARTED must not replace SUCCESS or FAILURE.
        """
        await self.set_states(states)
        return DONE

    async def set_final_state(self, signature: Signature, state: TaskState) -> None:
        """Store a task's SUCCESS or FAILURE. ``signature`` says which group the task
        belongs to, for backends that keep group members' states apart (AMQP)."""
        await self.set_states((state,))

    @abstractmethod
    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Write the group's GroupMeta (member UUIDs in group order)."""

    # -- reads -------------------------------------------------------------------

    @abstractmethod
    async def get_state(self, task_uuid: str) -> TaskState | None:
        """The latest state, or None if nothing is stored (unknown or expired)."""

    async def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """:meth:`get_state` of each, in order."""
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
        """Every member's state in group order; raises LookupError if a record is missing."""
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

    # -- waiting -------------------------------------------------------------------

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

    # -- control -------------------------------------------------------------------

    def control_channel(self) -> ControlChannel | None:
        """The fast way revocations reach workers, or None: workers then read task states
        (see ``machinery_aio/revoke.py``). The same object on every call."""
        return None

    def describe(self) -> str:
        """A one-line description for logs, with any password masked."""
        from ..urls import mask_url

        return mask_url(self.url)
