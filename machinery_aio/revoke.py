"""Revoking tasks: the sender's side (:func:`revoke`) and the worker's (:class:`Revocations`).

A revocation is stored as the task's FAILURE state with the error ``revoked`` (what a Go
reader or ``get()`` sees), and, where the result backend has a control channel (Redis,
RabbitMQ, memory), announced on it: every worker keeps the announced revocations in a
local set, so checking a task before it runs costs no round trip. A worker whose backend
has no channel (or whose channel is interrupted) reads the task's state before running it,
and every second reads the states of the tasks it runs, to cancel those revoked with
``terminate``. Revocations expire with ``results_expire_in``, as the states do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from .drivers.backend import ResultBackend
from .drivers.control import ControlChannel, Revocation
from .log import get_logger
from .state import State, TaskState

__all__ = ["REVOKED", "TERMINATED", "Revocations", "is_revoked", "revoke"]

logger = get_logger("machinery_aio.worker")

REVOKED = "revoked"
"""The error stored for a revoked task."""
TERMINATED = "revoked (terminated)"
"""The error stored for a task revoked with ``terminate=True``."""
POLL_INTERVAL = 1.0
"""Seconds between reads of running tasks' states, for backends without a control channel."""


def is_revoked(state: TaskState | None) -> bool:
    """True for the state :func:`revoke` stores."""
    return state is not None and state.state is State.FAILURE and state.error in (REVOKED, TERMINATED)


def revoked_state(task_uuid: str, terminate: bool, task_name: str = "") -> TaskState:
    error = TERMINATED if terminate else REVOKED
    return TaskState(task_uuid=task_uuid, task_name=task_name, state=State.FAILURE, error=error)


async def revoke(backend: ResultBackend, task_uuid: str, *, terminate: bool = False) -> bool:
    """Revoke the task ``task_uuid``: if it has not started, it never runs; with
    ``terminate``, a running copy is cancelled where it runs (a plain function's thread
    cannot be stopped: its result is discarded when it ends).

    Returns False (and changes nothing) if the task already finished.
    """
    if not task_uuid:
        raise ValueError("revoke needs a task UUID")
    stored = await backend.get_state(task_uuid)
    if stored is not None and stored.is_completed() and not is_revoked(stored):
        return False
    await backend.set_state(revoked_state(task_uuid, terminate))
    channel = backend.control_channel()
    if channel is not None:
        await channel.announce(Revocation(task_uuid, terminate, time.time() + backend.expires_in))
    return True


class Terminable(Protocol):
    """A run the worker can cancel (the runner's ``_Run``)."""

    def terminate(self) -> None: ...


class Revocations:
    """A worker's knowledge of revoked tasks; runs as one of its background services.

    Args:
        backend: where states live and whose control channel announces revocations.
        running: task UUID -> the run in progress on this worker (kept by the runner).
    """

    def __init__(self, backend: ResultBackend, running: Mapping[str, Terminable]) -> None:
        self.backend = backend
        self.running = running
        self.channel: ControlChannel | None = None
        self._known: dict[str, Revocation] = {}
        self._complete = False
        self._pruned = time.monotonic()

    def check(self, task_uuid: str) -> bool | None:
        """True if ``task_uuid`` is known to be revoked, False if known not to be, None
        when only the backend can tell (:meth:`read`)."""
        found = self._known.get(task_uuid)
        if found is not None:
            return not found.expired()
        return False if self._complete else None

    async def read(self, task_uuid: str) -> bool:
        """Whether the stored state says revoked (one read of the backend)."""
        return is_revoked(await self.backend.get_state(task_uuid))

    def add(self, revocation: Revocation) -> None:
        """Remember ``revocation``; cancel the task if it runs here and is to be terminated."""
        if revocation.expired():
            return
        self._known[revocation.task_uuid] = revocation
        if revocation.terminate:
            run = self.running.get(revocation.task_uuid)
            if run is not None:
                logger.warning("task %s revoked: cancelling it", revocation.task_uuid)
                run.terminate()
        if time.monotonic() - self._pruned > 60:
            self._prune()

    def _prune(self) -> None:
        now = time.time()
        self._known = {u: r for u, r in self._known.items() if not r.expired(now)}
        self._pruned = time.monotonic()

    def _ready(self, complete: bool) -> None:
        self._complete = complete

    async def run(self) -> None:
        """Listen on the control channel, or, without one, watch running tasks' states."""
        self.channel = self.backend.control_channel()
        if self.channel is not None:
            try:
                await self.channel.listen(self.add, self._ready)
            finally:
                self._complete = False
            return
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if not self.running:
                continue
            try:
                states = await self.backend.get_states(list(self.running))
            except Exception as exc:
                logger.warning("could not read running tasks' states for revocations: %s", exc)
                continue
            for state in states:
                if state is not None and is_revoked(state) and state.error == TERMINATED:
                    self.add(Revocation(state.task_uuid, True, time.time() + self.backend.expires_in))
