"""The ``eager://`` result backend: the embedded memory backend, in a namespace of its own."""

from __future__ import annotations

from ..memory.backend import MemoryBackend

__all__ = ["EagerBackend"]


class EagerBackend(MemoryBackend):
    """In-process records for ``eager://`` (Go's ``eager`` backend); ``eager://name``
    instances with the same name share records, apart from ``memory://name``."""

    namespace = "eager:"
