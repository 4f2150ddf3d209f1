"""Groups, chords and chains, built as Go Machinery builds them."""

from __future__ import annotations

from collections.abc import Iterable

from .signature import Signature, new_chord_uuid, new_group_uuid, new_task_uuid

__all__ = ["MAX_CHAIN_LINKS", "Chain", "Chord", "Group"]

MAX_CHAIN_LINKS = 250
"""The longest chain one message can carry: pydantic's encoder stops at 255 nested models."""


def _signatures(items: Iterable[Signature]) -> list[Signature]:
    sigs = list(items)
    for sig in sigs:
        if not isinstance(sig, Signature):
            raise TypeError(f"workflows take Signatures, got {type(sig).__name__}")
        if not sig.uuid:
            sig.uuid = new_task_uuid()
    return sigs


class Group:
    """Tasks that run in parallel. Every member gets the GroupUUID and GroupTaskCount."""

    def __init__(self, *tasks: Signature, group_uuid: str | None = None) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Signature):
            tasks = tuple(tasks[0])  # Group([sig1, sig2]) works too
        self.tasks = _signatures(tasks)
        if not self.tasks:
            raise ValueError("a group needs at least one task")
        self.group_uuid = group_uuid or new_group_uuid()
        for sig in self.tasks:
            sig.group_uuid = self.group_uuid
            sig.group_task_count = len(self.tasks)

    def task_uuids(self) -> list[str]:
        return [sig.uuid for sig in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Group {self.group_uuid} of {len(self.tasks)}>"


class Chord:
    """A group whose callback runs once every member has succeeded.

    The callback (UUID ``chord_...``) is embedded in every member; unless the
    callback is immutable, it receives every member's results in group order.
    """

    def __init__(self, group: Group, callback: Signature) -> None:
        if not isinstance(group, Group):
            raise TypeError("a chord takes a Group and a callback Signature")
        if not isinstance(callback, Signature):
            raise TypeError("a chord's callback must be a Signature")
        if not callback.uuid:
            callback.uuid = new_chord_uuid()
        self.group = group
        self.callback = callback
        for sig in group.tasks:
            sig.chord_callback = callback

    def __repr__(self) -> str:
        return f"<Chord {self.group.group_uuid} -> {self.callback.name}>"


class Chain:
    """Tasks that run one after another, each link nested in the previous one's OnSuccess.

    Each link receives the previous link's results appended to its args, unless
    the previous link is immutable.
    """

    def __init__(self, *tasks: Signature) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Signature):
            tasks = tuple(tasks[0])
        self.tasks = _signatures(tasks)
        if not self.tasks:
            raise ValueError("a chain needs at least one task")
        if len(self.tasks) > MAX_CHAIN_LINKS:
            raise ValueError(
                f"a chain of {len(self.tasks)} tasks nests too deep to be sent as one message "
                f"(each link is inside the previous one's OnSuccess; at most {MAX_CHAIN_LINKS}): "
                "split it, or send the rest from the last task"
            )
        for parent, child in zip(self.tasks, self.tasks[1:], strict=False):
            parent.on_success = [child]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Chain of {len(self.tasks)}: {' -> '.join(s.name for s in self.tasks)}>"
