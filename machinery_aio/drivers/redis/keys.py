"""Key names of the Redis broker.

Go Machinery's keys are kept as they are: a queue is a LIST named after the
queue, delayed tasks wait in one ZSET (``delayed_tasks`` by default). The keys
Go does not know about live next to the key they serve and in its Redis
Cluster slot, by using that key's name as the hash tag:

====================================  ==========================================
``{machinery_tasks}:processing:<id>``  LIST: messages consumer ``<id>`` claimed
``{machinery_tasks}:consumers``        ZSET: consumer id -> heartbeat deadline (ms)
``{machinery_tasks}:dead``             LIST: dead letters (JSON with the reason)
``{delayed_tasks}:staging:<id>``       LIST: due tasks a mover is pushing (cluster)
``{delayed_tasks}:movers``             ZSET: mover id -> heartbeat deadline (ms)
====================================  ==========================================

A key ``{x}...`` hashes to the slot of key ``x``, so every script runs over
keys of one slot. A name that already holds a hash tag (``{jobs}.high``) is
used as the prefix unchanged.
"""

from __future__ import annotations

__all__ = ["DelayedKeys", "QueueKeys", "slot_prefix"]


def slot_prefix(name: str) -> str:
    """A prefix whose keys land in the Redis Cluster slot of key ``name``."""
    start = name.find("{")
    if start != -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name
    return "{" + name + "}"


class QueueKeys:
    """The keys of one queue."""

    __slots__ = ("_prefix", "consumers", "dead")

    def __init__(self, queue: str) -> None:
        self._prefix = slot_prefix(queue)
        self.consumers = f"{self._prefix}:consumers"
        self.dead = f"{self._prefix}:dead"

    def processing(self, consumer_id: str) -> str:
        return f"{self._prefix}:processing:{consumer_id}"


class DelayedKeys:
    """The delayed-task ZSET and the keys its movers use on a cluster."""

    __slots__ = ("_prefix", "delayed", "movers")

    def __init__(self, delayed_key: str) -> None:
        self.delayed = delayed_key
        self._prefix = slot_prefix(delayed_key)
        self.movers = f"{self._prefix}:movers"

    def staging(self, mover_id: str) -> str:
        return f"{self._prefix}:staging:{mover_id}"
