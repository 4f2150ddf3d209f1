"""Go Machinery's RabbitMQ layout: queue names, declare arguments, delays, headers.

Pure functions, no I/O, so the layout can be read (and tested) in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...config import AMQPConfig

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "REASON_HEADER",
    "Route",
    "amqp_headers",
    "dead_letter_queue",
    "delay_bucket",
    "delay_queue",
    "delayed_queue",
    "handback_queue",
    "own_headers",
    "queue_binding_key",
    "route",
]

DEAD_LETTER_EXCHANGE = "machinery_dead"
"""Durable direct exchange that set-aside messages are published to, keyed by their queue."""
REASON_HEADER = "x-machinery-reason"
QUEUE_HEADER = "x-machinery-queue"
FAILED_AT_HEADER = "x-machinery-failed-at"


def is_direct(amqp: AMQPConfig) -> bool:
    return amqp.exchange_type == "direct"


class Route:
    """Where a publish goes: the routing key, and the queue (with its binding key) to declare."""

    __slots__ = ("binding_key", "queue", "routing_key")

    def __init__(self, routing_key: str, queue: str, binding_key: str) -> None:
        self.routing_key = routing_key
        self.queue = queue
        self.binding_key = binding_key

    def __repr__(self) -> str:
        return f"Route({self.routing_key!r} -> {self.queue!r} bound by {self.binding_key!r})"


def default_routing_key(amqp: AMQPConfig, default_queue: str) -> str:
    """Go's ``AdjustRoutingKey``: direct exchanges use ``binding_key``, others the default queue.

    An empty ``binding_key`` means the default queue's own name.
    """
    if is_direct(amqp) and amqp.binding_key:
        return amqp.binding_key
    return default_queue


def route(amqp: AMQPConfig, default_queue: str, routing_key: str) -> Route:
    """The queue Go's publisher declares for ``routing_key``.

    Direct exchange: a queue named after the routing key, bound with it; except
    that the configured ``binding_key`` routes to the default queue instead of
    declaring a phantom queue of that name (Go issues #262, #378). Other
    exchange types: the default queue bound with ``binding_key`` (or its name).
    """
    if is_direct(amqp):
        if amqp.binding_key and routing_key == amqp.binding_key:
            return Route(routing_key, default_queue, amqp.binding_key)
        return Route(routing_key, routing_key, routing_key)
    return Route(routing_key, default_queue, amqp.binding_key or default_queue)


def queue_binding_key(amqp: AMQPConfig, queue: str, default_queue: str) -> list[str]:
    """The binding keys a consumer binds ``queue`` with.

    Its own name, and for the default queue also a configured ``binding_key``
    (so tasks Go sends with an empty RoutingKey reach it). On non-direct
    exchanges, Go's ``binding_key`` when set (a topic pattern, say).
    """
    if not is_direct(amqp):
        return [amqp.binding_key or queue]
    keys = [queue]
    if amqp.binding_key and queue == default_queue and amqp.binding_key != queue:
        keys.append(amqp.binding_key)
    return keys


# -- delays ------------------------------------------------------------------------


ROUND_UP_BELOW = 100_000
"""Delays shorter than this (ms) are rounded up, longer ones down (see :func:`delay_bucket`)."""


def delay_bucket(ms: int) -> int:
    """``ms`` rounded to two significant digits, so the number of delay queues stays bounded.

    At most 90 distinct delays per power of ten (and routing key). Delays under
    100 s are rounded up: the task comes out less than 1 s late, never early.
    Longer ones are rounded down (98765 -> 98000): the task comes out less
    than 10 % early, and a Python worker puts it back for the rest of its
    delay (it only runs a task within 1 s of its ETA); a Go worker would run it.
    """
    if ms < 100:
        return max(ms, 0)
    scale: int = 10 ** (len(str(ms)) - 2)
    down = ms // scale * scale
    if ms < ROUND_UP_BELOW and down != ms:
        return down + scale
    return down


def delay_queue(amqp: AMQPConfig, ms: int, routing_key: str) -> tuple[str, dict[str, Any]]:
    """Go's per-delay TTL queue ``delay.<ms>.<exchange>.<routing key>`` and its arguments."""
    name = f"delay.{ms}.{amqp.exchange}.{routing_key}"
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": amqp.exchange,
        "x-dead-letter-routing-key": routing_key,
        "x-message-ttl": ms,
        "x-expires": ms * 2,
    }
    return name, arguments


def delayed_queue(amqp: AMQPConfig, routing_key: str, default_routing_key: str) -> tuple[str, dict[str, Any]]:
    """The shared ``delayed_queue`` for ``routing_key`` and its arguments.

    Go declares one queue named ``delayed_queue`` whose dead-letter routing key
    is fixed by the first task delayed through it, so a second routing key
    fails with PRECONDITION_FAILED. Here the default routing key uses that
    queue (as Go), and any other routing key ``<delayed_queue>.<routing key>``.
    """
    name = amqp.delayed_queue
    if routing_key != default_routing_key:
        name = f"{name}.{routing_key}"
    return name, {"x-dead-letter-exchange": amqp.exchange, "x-dead-letter-routing-key": routing_key}


# -- dead letters ----------------------------------------------------------------------


def dead_letter_queue(queue: str) -> str:
    """Where messages set aside from ``queue`` are kept: ``<queue>.dead``."""
    return f"{queue}.dead"


# -- hand-backs ------------------------------------------------------------------------


def handback_queue(queue: str) -> tuple[str, dict[str, Any]]:
    """``<queue>.handback`` and its arguments: messages handed back for later (task names no
    worker here knows) wait there with a per-message TTL, then dead-letter through the
    default exchange straight back into ``queue``, whatever its bindings."""
    return f"{queue}.handback", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


# -- headers -----------------------------------------------------------------------

DEAD_LETTERING_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
"""Headers RabbitMQ adds when it dead-letters a message (from a delay or hand-back queue)."""


def own_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A message's headers without those RabbitMQ added when it dead-lettered it, for a
    copy published again (a hand-back, a dead letter)."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith(DEAD_LETTERING_HEADERS)}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, separators=(",", ":"), default=str)


def amqp_headers(headers: Mapping[str, Any] | None) -> dict[str, str | None] | None:
    """Header values as strings, the only kind a Go worker can publish again.

    Go decodes the body's Headers with ``UseNumber`` and its AMQP client
    rejects the resulting numbers, so numbers, booleans and nested values are
    turned into their JSON text (``5`` -> ``"5"``); null stays null.
    """
    if headers is None:
        return None
    return {str(k): (None if v is None else _text(v)) for k, v in headers.items()}
