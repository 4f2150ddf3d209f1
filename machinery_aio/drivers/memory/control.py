"""Revocations within the process, for the ``memory://`` backend: every worker sharing the
store hears them at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..control import ControlChannel, Revocation, RevocationHandler

__all__ = ["MemoryControl"]


class MemoryControl(ControlChannel):
    """The remembered revocations and the workers listening, in this process."""

    def __init__(self) -> None:
        self.remembered: dict[str, Revocation] = {}
        self.listeners: set[RevocationHandler] = set()

    async def announce(self, revocation: Revocation) -> None:
        now = time.time()
        self.remembered = {u: r for u, r in self.remembered.items() if not r.expired(now)}
        self.remembered[revocation.task_uuid] = revocation
        for handler in list(self.listeners):
            handler(revocation)

    async def listen(self, handler: RevocationHandler, ready: Callable[[bool], None]) -> None:
        self.listeners.add(handler)
        try:
            for revocation in list(self.remembered.values()):
                handler(revocation)
            ready(True)
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self.listeners.discard(handler)
