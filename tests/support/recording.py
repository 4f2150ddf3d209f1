"""Real memory:// implementations that also record what was asked of them, in order."""

from __future__ import annotations

from collections.abc import Sequence

from machinery_aio import Signature, State, TaskState
from machinery_aio.drivers.memory.backend import MemoryBackend
from machinery_aio.drivers.memory.broker import MemoryBroker


class RecordingBackend(MemoryBackend):
    """A MemoryBackend that keeps a log of every write.

    Every state write of the engine ends in ``set_states`` (``set_state``,
    ``set_states_soon`` and ``set_final_state`` are built on it), so one call
    there is one write: ``("set_states", [(uuid, state), ...])``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, object]] = []

    async def set_states(self, states: Sequence[TaskState]) -> None:
        self.calls.append(("set_states", [(s.task_uuid, s.state) for s in states]))
        await super().set_states(states)

    async def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        self.calls.append(("init_group", (group_uuid, list(task_uuids))))
        await super().init_group(group_uuid, task_uuids)

    def states_of(self, task_uuid: str) -> list[State]:
        """Every state written for ``task_uuid``, in order."""
        out: list[State] = []
        for kind, data in self.calls:
            if kind == "set_states":
                out.extend(state for uuid, state in data if uuid == task_uuid)  # type: ignore[attr-defined]
        return out


class RecordingBroker(MemoryBroker):
    """A MemoryBroker that keeps a log of every publish (the bytes as published)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, list[bytes]]] = []

    async def publish(self, signature: Signature) -> None:
        await super().publish(signature)
        self.calls.append(("publish", [signature.to_json()]))

    async def publish_many(self, signatures: Sequence[Signature]) -> None:
        await super().publish_many(signatures)
        self.calls.append(("publish_many", [s.to_json() for s in signatures]))

    def published(self) -> list[Signature]:
        return [Signature.from_json(body) for _, bodies in self.calls for body in bodies]
