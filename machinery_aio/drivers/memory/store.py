"""Process-wide named stores for the embedded ``memory://`` implementations.

``memory://`` and ``memory://name`` address a store shared by every Server in
the process (and event loop), so a producer and an embedded worker built from
different Server objects see the same queues and results.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_STORES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[type, str], object]] = (
    weakref.WeakKeyDictionary()
)


def store_name(url: str) -> str:
    """``memory://jobs`` -> ``jobs``; ``memory://`` -> ``""``."""
    if "://" not in url:
        return ""
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def shared(kind: type[T], name: str, factory: Callable[[], T]) -> T:
    """The store of ``kind`` called ``name`` for the running event loop."""
    loop = asyncio.get_running_loop()
    stores = _STORES.setdefault(loop, {})
    key = (kind, name)
    found = stores.get(key)
    if found is None:
        found = stores[key] = factory()
    assert isinstance(found, kind)
    return found
