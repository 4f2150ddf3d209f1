"""Every library/broker pair the suite measures."""

from __future__ import annotations

import os
from dataclasses import dataclass

MACHINERY = "benchmarks.peers.machinery_bench"
PUBSUB_EMULATOR = "pubsub-emulator"
"""Google Cloud Pub/Sub, on Google's emulator at PUBSUB_EMULATOR_HOST (127.0.0.1:8085 unless set):
emulator figures, not Google's service."""


@dataclass(frozen=True)
class Target:
    library: str
    broker: str
    """memory, redis, amqp or pubsub-emulator."""
    adapter: str
    env: str
    """main (this interpreter), peers, arq or baseline:<git revision> (see :mod:`benchmarks.envs`)."""
    variables: tuple[tuple[str, str], ...] = ()
    """Environment variables for the driver and its workers."""

    @property
    def name(self) -> str:
        return f"{self.library}/{self.broker}"

    def urls(self, redis: str, amqp: str) -> tuple[str, str]:
        """(broker URL, result backend URL); results go to Redis except on memory://."""
        if self.broker == "memory":
            return "memory://", "memory://"
        if self.broker == "amqp":
            return amqp, redis
        if self.broker == PUBSUB_EMULATOR:  # one subscription per phase, named after its queue
            return "gcppubsub://machinery-bench/{queue}", redis
        return redis, redis


def _peer(library: str, module: str, env: str = "peers") -> Target:
    return Target(library, "redis", f"benchmarks.peers.{module}", env)


TARGETS: list[Target] = [
    Target("machinery-aio", "memory", MACHINERY, "main"),
    Target("machinery-aio", "redis", MACHINERY, "main"),
    Target("machinery-aio", "amqp", MACHINERY, "main"),
    Target(
        "machinery-aio",
        PUBSUB_EMULATOR,
        MACHINERY,
        "main",
        (("PUBSUB_EMULATOR_HOST", os.environ.get("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")),),
    ),
    # one no-op middleware with all four hooks: what the seam costs when it is used
    Target("machinery-aio+mw", "redis", MACHINERY, "main", (("BENCH_MIDDLEWARE", "1"),)),
    _peer("arq", "arq_bench", env="arq"),
    _peer("taskiq", "taskiq_bench"),
    _peer("saq", "saq_bench"),
    _peer("streaq", "streaq_bench"),
    _peer("dramatiq", "dramatiq_bench"),
    _peer("celery", "celery_bench"),
    Target("celery", "amqp", "benchmarks.peers.celery_bench", "peers"),
]

SMOKE = ["machinery-aio/memory", "machinery-aio/redis"]


def baseline(revision: str, brokers: set[str]) -> list[Target]:
    """machinery-aio as it was at git ``revision``, on ``brokers``, through the same adapter."""
    return [
        Target(f"machinery-aio@{revision}", broker, MACHINERY, f"baseline:{revision}")
        for broker in ("memory", "redis", "amqp")
        if broker in brokers
    ]


def select(only: list[str] | None) -> list[Target]:
    """Targets whose name or library is in ``only`` (all when empty), in suite order."""
    if not only:
        return list(TARGETS)
    wanted = {w.strip() for w in only if w.strip()}
    unknown = wanted - {t.name for t in TARGETS} - {t.library for t in TARGETS} - {t.broker for t in TARGETS}
    if unknown:
        names = ", ".join(t.name for t in TARGETS)
        raise ValueError(f"unknown target(s) {', '.join(sorted(unknown))}; known: {names}")
    return [t for t in TARGETS if wanted & {t.name, t.library, t.broker}]
