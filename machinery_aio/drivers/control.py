"""The control channel: how a revocation reaches every worker at once, and is remembered
for workers started later.

A result backend offers one (:meth:`ResultBackend.control_channel`) where its technology
has a fast way: Redis pub/sub with a sorted set, a RabbitMQ fanout exchange into a stream,
the in-process memory store. A backend without one needs no code: workers then learn of
revocations from the task states (see ``machinery_aio/revoke.py``).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ControlChannel", "Revocation", "RevocationHandler"]


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked task: whether a running copy is to be cancelled, and until when (Unix s)
    the revocation holds."""

    task_uuid: str
    terminate: bool
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at <= (time.time() if now is None else now)

    def to_json(self) -> bytes:
        return json.dumps(
            {"uuid": self.task_uuid, "terminate": self.terminate, "expires": self.expires_at}
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Revocation:
        """Raises ValueError for anything but a revocation."""
        try:
            doc = json.loads(data)
            return cls(str(doc["uuid"]), bool(doc["terminate"]), float(doc["expires"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a revocation: {data!r:.80}") from exc


RevocationHandler = Callable[[Revocation], None]


class ControlChannel(ABC):
    """Carries revocations from :func:`machinery_aio.revoke.revoke` to every worker."""

    @abstractmethod
    async def announce(self, revocation: Revocation) -> None:
        """Remember ``revocation`` until it expires and tell every listening worker."""

    @abstractmethod
    async def listen(self, handler: RevocationHandler, ready: Callable[[bool], None]) -> None:
        """Run until cancelled: call ``handler`` for every remembered revocation, then for
        each new one. Call ``ready(True)`` once every revocation announced so far was handed
        over (the worker's knowledge is complete from then on), ``ready(False)`` while the
        channel is interrupted (the worker then reads task states instead)."""
