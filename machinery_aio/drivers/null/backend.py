"""The ``null://`` backend: stores nothing (fire-and-forget tasks).

As in Go, :meth:`group_completed` and :meth:`trigger_chord` report True, so a
chord's callback is sent by every member that finishes (it receives no
results) and results cannot be awaited. Use a real backend for chords.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...state import GroupMeta, TaskState
from ..backend import BackendCapabilities, ResultBackend

__all__ = ["NullBackend"]


class NullBackend(ResultBackend):
    """Discards every state; reads find nothing."""

    capabilities = BackendCapabilities(stores_results=False)

    async def set_states(self, states: Sequence[TaskState]) -> None:
        return None

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        return None

    async def get_state(self, task_uuid: str) -> TaskState | None:
        return None

    async def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        return None

    async def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        return True

    async def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        return []

    async def trigger_chord(self, group_uuid: str) -> bool:
        return True

    async def wait_for_state(
        self, task_uuid: str, timeout: float | None, interval: float = 0.05
    ) -> TaskState:
        raise RuntimeError("the null:// backend stores no results; configure a real backend")
