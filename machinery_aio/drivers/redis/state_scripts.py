"""Lua scripts of the Redis result backend. Each touches the keys it is given.

Stored records keep Go's exact bytes: values are spliced into the JSON as
text, never re-encoded, except as a fallback for records not in Go's shape.
"""

from __future__ import annotations

from .batcher import LuaScript

__all__ = ["COUNT_COMPLETED", "SET_STATE", "TRIGGER_CHORD"]

SET_STATE = LuaScript(r"""
-- KEYS: task uuid. ARGV: expiry s, channel or '' (no PUBLISH), guard, then for each state
-- to store, in order: head, TaskName JSON or '' (keep the stored one), middle, CreatedAt
-- JSON or '' (keep the stored one), tail. Stores each head..',"TaskName":'..name..middle..
-- ',"CreatedAt":'..created..tail in turn (a task's RECEIVED then STARTED), as Go's Redis
-- backend does with a GET and a SET per state, in one atomic step; PUBLISHes the last.
-- guard 'started': written without waiting, so it must not replace SUCCESS or FAILURE.
-- guard 'pending': a PENDING written alongside its publish; a state with no CreatedAt is
-- the worker's, written first: it stays, and gets the PENDING's CreatedAt. Returns 1 if
-- the states were stored, 0 if the guard kept the stored one.
local old_name, old_created
local old = redis.call('GET', KEYS[1])
if old then
  old_name = string.match(old, '^{"TaskUUID":".-","TaskName":(".-"),"State":"')
  old_created = string.match(old, ',"CreatedAt":("[^"]*"),"TTL":%-?%d+}$')
  if old_name == nil or old_created == nil then
    local ok, doc = pcall(cjson.decode, old)
    if ok and type(doc) == 'table' then
      if old_name == nil and type(doc['TaskName']) == 'string' then
        old_name = cjson.encode(doc['TaskName'])
      end
      if old_created == nil and type(doc['CreatedAt']) == 'string' then
        old_created = cjson.encode(doc['CreatedAt'])
      end
    end
  end
  local guard = ARGV[3]
  if guard == 'started' and (string.find(old, '"State":"SUCCESS"', 1, true)
                             or string.find(old, '"State":"FAILURE"', 1, true)) then
    return 0
  end
  local zero = '"0001-01-01T00:00:00Z"'
  if guard == 'pending' and old_created == zero then
    local s, e = string.find(old, ',"CreatedAt":' .. zero, 1, true)
    if s then
      old = string.sub(old, 1, s - 1) .. ',"CreatedAt":' .. ARGV[7] .. string.sub(old, e + 1)
      redis.call('SET', KEYS[1], old, 'EX', ARGV[1])
    end
    return 0
  end
end
local data
for i = 4, #ARGV, 5 do
  local name, created = ARGV[i + 1], ARGV[i + 3]
  if name == '' then name = old_name or '""' end
  if created == '' then created = old_created or '"0001-01-01T00:00:00Z"' end
  data = ARGV[i] .. ',"TaskName":' .. name .. ARGV[i + 2] .. ',"CreatedAt":' .. created .. ARGV[i + 4]
  redis.call('SET', KEYS[1], data, 'EX', ARGV[1])
  old_name, old_created = name, created
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], data)
end
return 1
""")

TRIGGER_CHORD = LuaScript(r"""
-- KEYS: group uuid, {group uuid}:chord_owner. ARGV: expiry s, the caller's token.
-- Sets ChordTriggered in the GroupMeta. Returns 1 for the one caller that set it (again
-- for that caller if its command is re-sent after a lost reply: redis-py retries on
-- connection errors), 0 if someone else set it, -1 if the group has no metadata.
local meta = redis.call('GET', KEYS[1])
if not meta then return -1 end
local s, e = string.find(meta, '"ChordTriggered":false', 1, true)
if s then
  meta = string.sub(meta, 1, s - 1) .. '"ChordTriggered":true' .. string.sub(meta, e + 1)
  redis.call('SET', KEYS[1], meta, 'EX', ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if string.find(meta, '"ChordTriggered":true', 1, true) then return 0 end
local ok, doc = pcall(cjson.decode, meta)
if not ok or type(doc) ~= 'table' then
  return redis.error_reply('group ' .. KEYS[1] .. ' metadata is not a GroupMeta')
end
if doc['ChordTriggered'] then return 0 end
doc['ChordTriggered'] = true
redis.call('SET', KEYS[1], cjson.encode(doc), 'EX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
return 1
""")

COUNT_COMPLETED = LuaScript(r"""
-- KEYS: task uuids. Returns how many are SUCCESS or FAILURE.
local n = 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    local st = string.match(v, '"State":"(%u+)"')
    if st == 'SUCCESS' or st == 'FAILURE' then n = n + 1 end
  end
end
return n
""")
