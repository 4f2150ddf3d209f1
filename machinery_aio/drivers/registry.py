"""The worker registry interface: where workers' heartbeats are kept, so they can be listed.

A broker or result backend driver that can keep small records with an expiry implements
it; every worker then writes its :class:`~machinery_aio.heartbeat.WorkerInfo` there every
few seconds, and ``machinery-aio inspect workers`` reads the live ones. Records are opaque
bytes to the driver; each carries the Unix time after which it no longer counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["WorkerRegistry"]


class WorkerRegistry(ABC):
    """Keeps one record per live worker, each until its expiry time."""

    @abstractmethod
    async def record_worker(self, key: str, data: bytes, expires_at: float) -> None:
        """Store (or replace) the record ``key`` until ``expires_at`` (Unix seconds)."""

    @abstractmethod
    async def remove_worker(self, key: str) -> None:
        """Forget the record ``key`` (a worker that stops cleanly)."""

    @abstractmethod
    async def list_workers(self) -> list[bytes]:
        """Every record whose expiry time has not passed (expired ones may be deleted)."""
