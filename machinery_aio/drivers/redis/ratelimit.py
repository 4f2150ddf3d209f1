"""Rate limits across every worker sharing a Redis: one atomic script per run.

``{machinery_aio:rate:<task name>}`` holds the earliest start (Unix ms, Redis's clock) of
the name's next run; ``{machinery_aio:rate:<task name>}:<task uuid>`` a run's reservation
while it waits in the broker. Both are in one Redis Cluster slot and expire on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..ratelimit import Rate, RateLimiter
from .batcher import LuaScript

if TYPE_CHECKING:
    from .broker import RedisBroker

__all__ = ["RedisRateLimiter"]

ACQUIRE = LuaScript(r"""
-- KEYS: the name's next start, this run's reservation. ARGV: interval ms.
-- Returns the ms until this run may start (0: now); a run later than half an interval
-- after its reservation gets a new turn.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local reserved = redis.call('GET', KEYS[2])
if reserved then
  local left = tonumber(reserved) - now
  if left > 0 then return left end
  redis.call('DEL', KEYS[2])
  if -left <= interval / 2 then return 0 end
end
local at = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
redis.call('SET', KEYS[1], at + interval, 'PX', at + interval - now + 1000)
local wait = at - now
if wait > 0 then
  redis.call('SET', KEYS[2], at, 'PX', wait + 3600000)
end
return wait
""")


class RedisRateLimiter(RateLimiter):
    """Limits shared by every worker on the broker's Redis."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    async def acquire(self, name: str, rate: Rate, task_uuid: str) -> float:
        key = "{machinery_aio:rate:" + name + "}"
        args = [max(1, round(rate.interval * 1000))]
        wait_ms = await self.broker.batcher.script(ACQUIRE, [key, f"{key}:{task_uuid}"], args)
        return int(wait_ms) / 1000.0
