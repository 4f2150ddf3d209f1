"""Lua scripts of the Redis broker. Each touches the keys of one cluster slot,
except MOVE_DUE, which runs on a single Redis only (see DelayedMover)."""

from __future__ import annotations

from .batcher import LuaScript

__all__ = [
    "CLAIM",
    "DEAD_LETTER",
    "DELETE_DEAD",
    "HAND_BACK",
    "HEARTBEAT",
    "MOVE_DUE",
    "PURGE",
    "RECOVER_STAGING",
    "RELEASE",
    "REQUEUE",
    "REQUEUE_DEAD",
    "REQUEUE_DEAD_BATCH",
    "RETURN_ALL",
    "STAGE_DUE",
]

_NOW_MS = """
local _t = redis.call('TIME')
local now_ms = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

CLAIM = LuaScript(
    _NOW_MS
    + r"""
-- KEYS: queue, processing list, consumers; ARGV: max count, consumer id, timeout ms.
-- Registers the consumer (so its list is never orphaned), then moves up to
-- ARGV[1] messages from the head of the queue to the tail of its list.
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[3]), ARGV[2])
local n = tonumber(ARGV[1])
if n <= 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, n - 1)
local count = #items
if count == 0 then return items end
redis.call('LTRIM', KEYS[1], count, -1)
for i = 1, count, 500 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 499, count)))
end
return items
"""
)

REQUEUE = LuaScript(r"""
-- KEYS: processing list, queue; ARGV: body. Back to the tail, as Go does.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  return redis.call('RPUSH', KEYS[2], ARGV[1])
end
return 0
""")

HAND_BACK = LuaScript(r"""
-- KEYS: processing list, delayed set; ARGV: body, due (Unix ns). Into the delayed set, bytes
-- unchanged: the delayed-task mover (Go's or ours) puts it back on its queue when due.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return 0
""")

ACK = LuaScript(r"""
-- KEYS: processing list; ARGV: bodies of finished messages. Removes one claim of each.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return n
""")

RELEASE = LuaScript(r"""
-- KEYS: processing list, queue; ARGV: bodies in delivery order. Back to the head, in order.
local n = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
""")

DEAD_LETTER = LuaScript(r"""
-- KEYS: processing list, dead-letter list; ARGV: body, dead letter JSON.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
""")

RETURN_ALL = LuaScript(
    _NOW_MS
    + r"""
-- KEYS: consumers, processing list, queue; ARGV: consumer id, '1' = reap it only if its
-- heartbeat expired, '0' = it is closing. Moves the whole list back to the head of the
-- queue, oldest claim first. A reaped consumer is deregistered; a closing one is marked
-- expired instead, so that a live consumer sweeps its list once more (a BLMOVE cancelled
-- while closing may still land a message there).
if ARGV[2] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) > now_ms then return -1 end
end
local n = 0
while redis.call('RPOPLPUSH', KEYS[2], KEYS[3]) do n = n + 1 end
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
end
return n
"""
)

HEARTBEAT = LuaScript(
    _NOW_MS
    + r"""
-- KEYS: consumers; ARGV: consumer id, timeout ms. Returns the ids whose deadline passed.
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now_ms))
"""
)

PURGE = LuaScript(r"""
-- KEYS: queue. Returns how many messages were deleted.
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
""")

REQUEUE_DEAD = LuaScript(r"""
-- KEYS: dead list, queue; ARGV: the dead letter's JSON, its body. Back to the queue's tail.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
""")

REQUEUE_DEAD_BATCH = LuaScript(r"""
-- KEYS: dead list, queue; ARGV: max count. The oldest dead letters' bodies back to the queue's
-- tail, oldest first; returns how many.
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, item in ipairs(items) do
  redis.call('RPUSH', KEYS[2], cjson.decode(item)['body'])
end
redis.call('LTRIM', KEYS[1], #items, -1)
return #items
""")

DELETE_DEAD = LuaScript(r"""
-- KEYS: dead list; ARGV: the dead letter's JSON.
return redis.call('LREM', KEYS[1], 1, ARGV[1])
""")

_ROUTING_KEY = r"""
-- The message's RoutingKey (Go matches JSON keys case-insensitively), else the default.
local function routing_key(body, default)
  local rk = string.match(body,
    '^{"UUID":"[^"\\]*","Name":"[^"\\]*","RoutingKey":"([^"\\]*)","ETA":')
  if rk == nil then
    local ok, doc = pcall(cjson.decode, body)
    if ok and type(doc) == 'table' then
      rk = doc['RoutingKey']
      if rk == nil then
        for k, v in pairs(doc) do
          if type(k) == 'string' and string.lower(k) == 'routingkey' then rk = v end
        end
      end
    end
  end
  if type(rk) ~= 'string' or rk == '' then return default end
  return rk
end
"""

MOVE_DUE = LuaScript(
    _ROUTING_KEY
    + r"""
-- Single Redis only. KEYS: delayed ZSET; ARGV: now (Unix ns), max count, default queue.
-- Moves every due task (up to the max) to the tail of its RoutingKey's list, bytes
-- unchanged, and returns {moved, score of the earliest task left or ''}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, body in ipairs(due) do
  redis.call('RPUSH', routing_key(body, ARGV[3]), body)
  redis.call('ZREM', KEYS[1], body)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] or ''}
"""
)

STAGE_DUE = LuaScript(
    _NOW_MS
    + r"""
-- Cluster. KEYS: delayed ZSET, this mover's staging list, movers; ARGV: now (Unix ns),
-- max count, mover id, timeout ms. Unless the staging list still holds a batch that
-- was not pushed yet, moves the due tasks into it. Returns {staging list contents,
-- score of the earliest task left or '', ids of movers whose heartbeat expired}.
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[4]), ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', now_ms))
if redis.call('EXISTS', KEYS[2]) == 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
  for i = 1, #due, 500 do
    local last = math.min(i + 499, #due)
    redis.call('ZREM', KEYS[1], unpack(due, i, last))
    redis.call('RPUSH', KEYS[2], unpack(due, i, last))
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {redis.call('LRANGE', KEYS[2], 0, -1), first[2] or '', dead}
"""
)

RECOVER_STAGING = LuaScript(
    _NOW_MS
    + r"""
-- Cluster. KEYS: movers, a dead mover's staging list, delayed ZSET; ARGV: mover id.
-- Puts the tasks it was pushing back into the ZSET as due now.
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline and tonumber(deadline) > now_ms then return -1 end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for _, body in ipairs(items) do
  redis.call('ZADD', KEYS[3], 'NX', 0, body)
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return #items
"""
)
