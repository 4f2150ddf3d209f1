"""Revocations over Redis: remembered in a sorted set, announced by pub/sub.

``machinery_aio:revoked`` (ZSET) holds ``<task uuid> <0|1>`` (1: terminate) scored by the
revocation's expiry in Unix seconds; the script that adds one also drops the expired ones
and PUBLISHes it on ``machinery_aio:control``. A worker subscribes, waits for Redis to
confirm, then reads the set: a revocation announced before the confirmation is in the set,
one announced after it arrives as a message. After an interruption it does the same again,
and it reads the set again every minute in any case. Go Machinery never reads these keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...log import get_logger
from ..control import ControlChannel, Revocation, RevocationHandler
from .batcher import LuaScript, run_script

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["CONTROL_CHANNEL", "REVOKED_KEY", "RedisControl"]

logger = get_logger("machinery_aio.worker")

REVOKED_KEY = "machinery_aio:revoked"
CONTROL_CHANNEL = "machinery_aio:control"
RESYNC = 60.0
"""Seconds between full reads of the revoked set while subscribed."""

ANNOUNCE = LuaScript(r"""
-- KEYS: the revoked set. ARGV: member, expiry (Unix s), now (Unix s), message, channel.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
""")


def _member(revocation: Revocation) -> str:
    return f"{revocation.task_uuid} {int(revocation.terminate)}"


def _parse_member(member: bytes, score: float) -> Revocation:
    uuid, _, flag = member.decode().partition(" ")
    return Revocation(uuid, flag == "1", score)


class RedisControl(ControlChannel):
    """The control channel of a Redis result backend."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    async def announce(self, revocation: Revocation) -> None:
        """One script: remember, drop the expired, publish."""
        args: list[str | bytes] = [_member(revocation), repr(revocation.expires_at), repr(time.time())]
        args += [revocation.to_json(), CONTROL_CHANNEL]
        await run_script(self.backend.client, ANNOUNCE, [REVOKED_KEY], args)

    async def remembered(self) -> list[Revocation]:
        """Every revocation not yet expired."""
        client: Any = self.backend.client
        raw: list[tuple[bytes, float]] = await client.zrangebyscore(
            REVOKED_KEY, time.time(), "+inf", withscores=True
        )
        return [_parse_member(member, score) for member, score in raw]

    async def listen(self, handler: RevocationHandler, ready: Callable[[bool], None]) -> None:
        failures = 0
        while True:
            pubsub: Any = None
            try:
                client = self.backend.client
                initialize = getattr(client, "initialize", None)
                if initialize is not None:  # a cluster client learns its nodes first
                    await initialize()
                pubsub = client.pubsub()
                await pubsub.subscribe(CONTROL_CHANNEL)
                await _confirmed(pubsub)
                await self._load(handler)
                ready(True)
                failures = 0
                resync = time.monotonic() + RESYNC
                while True:
                    message = await pubsub.get_message(timeout=max(0.0, resync - time.monotonic()))
                    if message is None or time.monotonic() >= resync:
                        await self._load(handler)
                        resync = time.monotonic() + RESYNC
                    if message is not None and message.get("type") == "message":
                        _dispatch(message.get("data"), handler)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ready(False)
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                logger.warning("revocation channel interrupted (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception as exc:
                        logger.debug("closing the revocation pub/sub connection failed: %s", exc)

    async def _load(self, handler: RevocationHandler) -> None:
        for revocation in await self.remembered():
            handler(revocation)


async def _confirmed(pubsub: Any) -> None:
    """Wait until Redis confirms the subscription (messages before it are in the set)."""
    while True:
        message = await pubsub.get_message(timeout=5.0)
        if message is None:
            raise TimeoutError("Redis did not confirm the revocation subscription in 5 s")
        if message.get("type") == "subscribe":
            return


def _dispatch(data: Any, handler: RevocationHandler) -> None:
    try:
        revocation = Revocation.from_json(data)
    except ValueError as exc:
        logger.warning("ignoring a message on %s: %s", CONTROL_CHANNEL, exc)
        return
    handler(revocation)
