"""The Lua scripts. Each one runs atomically on the node that owns the topic's hash slot.

Every script gets the topic's base key (``<prefix>:{<topic>}``) as ``KEYS[1]`` and
derives the topic's other keys from it (see :class:`~backends.redis_streams.keys.TopicKeys`);
they all share the hash tag, so on a cluster they live in the same slot.

Atomicity is what makes the emulations safe with many clients: a delayed message is
moved from the zset to its stream and removed from the zset in one step (moved exactly
once however many subscribers run the mover), and a nack acknowledges the original
entry and appends the redelivery in one step (never both lost, never both kept).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["SCRIPTS", "Script"]

_PRELUDE = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function create_group(key, group, id)
  local r = redis.pcall('XGROUP', 'CREATE', key, group, id, 'MKSTREAM')
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'BUSYGROUP', 1, true) then return 0 end
    return error(r)
  end
  return 1
end

local function xadd(key, fields, maxlen)
  if maxlen ~= '' then
    return redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  return redis.call('XADD', key, '*', unpack(fields))
end

-- The stream of a priority level; a level seen for the first time gets every group
-- of the topic, created at 0 (all of its entries are newer than every group).
local function ensure_level(base, level)
  level = tonumber(level)
  if level <= 0 then return base end
  local key = base .. ':p' .. level
  if redis.call('SADD', base .. ':levels', level) == 1 then
    for _, g in ipairs(redis.call('SMEMBERS', base .. ':groups')) do
      create_group(key, g, '0')
    end
  end
  return key
end

-- Move due delayed messages to their stream; return ms until the next one is due
-- (-1: none, 0: more are due now).
local function move_due(base, limit, maxlen)
  local zkey = base .. ':delayed'
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local d = cmsgpack.unpack(member)
    local key
    if d[1] == 'l' then key = ensure_level(base, d[2]) else key = base .. ':r:' .. d[2] end
    local fields = {}
    for i = 3, #d do fields[#fields + 1] = d[i] end
    xadd(key, fields, maxlen)
    redis.call('ZREM', zkey, member)
  end
  if #due >= limit then return 0 end
  local nxt = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if #nxt == 0 then return -1 end
  local wait = tonumber(nxt[2]) - now
  if wait < 0 then wait = 0 end
  return wait
end

local function parse_id(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
"""

_DECLARE = r"""
-- ARGV: start id ('$' or '0'), group...
local base, start = KEYS[1], ARGV[1]
local levels = redis.call('SMEMBERS', base .. ':levels')
local created = {}
for i = 2, #ARGV do
  local g = ARGV[i]
  redis.call('SADD', base .. ':groups', g)
  created[#created + 1] = create_group(base, g, start)
  for _, l in ipairs(levels) do create_group(base .. ':p' .. l, g, start) end
  create_group(base .. ':r:' .. g, g, '0')
end
return created
"""

_PUBLISH_LEVEL = r"""
-- ARGV: level, maxlen, field, value, ...
local key = ensure_level(KEYS[1], ARGV[1])
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
return xadd(key, fields, ARGV[2])
"""

_SCHEDULE = r"""
-- ARGV: delay ms, level, field, value, ...
local member = cmsgpack.pack({'l', tonumber(ARGV[2]), unpack(ARGV, 3)})
redis.call('ZADD', KEYS[1] .. ':delayed', now_ms() + tonumber(ARGV[1]), member)
return 1
"""

_REQUEUE = r"""
-- ARGV: group, consumer, delay ms ('' = now), maxlen, mode, ...
--   mode 'ids':   stream key, entry id, ...  (only entries this consumer still holds)
--   mode 'owned': stream key, ...            (everything this consumer holds; then the
--                                             consumer is deleted)
-- Each entry is acknowledged and appended to the group's redelivery stream (or the
-- delayed zset) with bus-attempts = deliveries made so far.
local base, group, consumer, delay, maxlen = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dest = base .. ':r:' .. group
local now = nil
local moved = 0
local function requeue(key, id, count)
  local e = redis.call('XRANGE', key, id, id)
  redis.call('XACK', key, group, id)
  if #e == 0 then return end
  local fields, out, prior = e[1][2], {}, 0
  for i = 1, #fields, 2 do
    if fields[i] == 'bus-attempts' then
      prior = tonumber(fields[i + 1]) or 0
    else
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  out[#out + 1] = 'bus-attempts'
  out[#out + 1] = tostring(prior + count)
  if delay == '' then
    xadd(dest, out, maxlen)
  else
    if now == nil then now = now_ms() end
    redis.call('ZADD', base .. ':delayed', now + tonumber(delay),
      cmsgpack.pack({'r', group, unpack(out)}))
  end
  moved = moved + 1
end
if ARGV[5] == 'ids' then
  for i = 6, #ARGV, 2 do
    local key, id = ARGV[i], ARGV[i + 1]
    local p = redis.pcall('XPENDING', key, group, id, id, 1)
    if type(p) == 'table' and not p.err and #p > 0 and p[1][2] == consumer then
      requeue(key, id, tonumber(p[1][4]))
    end
  end
else
  for i = 6, #ARGV do
    local key = ARGV[i]
    while true do
      local p = redis.pcall('XPENDING', key, group, '-', '+', 100, consumer)
      if type(p) ~= 'table' or p.err or #p == 0 then break end
      for _, row in ipairs(p) do requeue(key, row[1], tonumber(row[4])) end
    end
    redis.pcall('XGROUP', 'DELCONSUMER', key, group, consumer)
  end
end
return moved
"""

_FETCH = r"""
-- ARGV: group, consumer, want, maxlen, move limit, reclaim idle ms ('' = no reclaim),
--       recover count (0 = no), n, stream key * n (read order), reclaim cursor * n,
--       read new entries ('1') or leave them to an XREADGROUP sent after ('0')
-- Returns {entries, ms until next delayed message, cursors, levels}; an entry is
-- {stream index, id, fields, delivery count}.
local base, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local want = tonumber(ARGV[3])
local maxlen = ARGV[4]
local due_in = move_due(base, tonumber(ARGV[5]), maxlen)
local idle, recover, n = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local out, cursors = {}, {}

local function ensure(key)
  create_group(key, group, '0')
  redis.call('SADD', base .. ':groups', group)
end

local function readgroup(key, count, id)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', key, id)
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP', 1, true) then return error(r) end
    ensure(key)  -- the group vanished (data loss): recreate it, keeping what is there
    r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
      'STREAMS', key, id)
  end
  if not r then return {} end
  return r[1][2]
end

local function deliveries(key, id)
  local p = redis.call('XPENDING', key, group, id, id, 1)
  if #p == 0 then return 1 end
  return tonumber(p[1][4])
end

-- 1. after a reconnect: entries this consumer holds but whose reply may have been lost
if recover > 0 then
  for i = 1, n do
    local key = ARGV[8 + i]
    for _, e in ipairs(readgroup(key, recover, '0')) do
      if e[2] then
        out[#out + 1] = {i, e[1], e[2], deliveries(key, e[1])}
      else
        redis.call('XACK', key, group, e[1])  -- trimmed while pending
      end
    end
  end
end

-- 2. entries idle past the lease (their consumer died or is stuck)
for i = 1, n do
  local key, cursor = ARGV[8 + i], ARGV[8 + n + i]
  if idle ~= '' and want > 0 then
    local r = redis.pcall('XAUTOCLAIM', key, group, consumer, idle, cursor, 'COUNT', want)
    if type(r) == 'table' and r.err then
      if not string.find(r.err, 'NOGROUP', 1, true) then return error(r) end
      ensure(key)
      cursor = '0-0'
    else
      cursor = r[1]
      for _, e in ipairs(r[2]) do
        if e[2] then
          out[#out + 1] = {i, e[1], e[2], deliveries(key, e[1])}
          want = want - 1
        else
          redis.call('XACK', key, group, e[1])  -- Redis 6.2: trimmed while pending
        end
      end
    end
  end
  cursors[i] = cursor
end

-- 3. new entries, in read order (redeliveries, then highest priority first)
if ARGV[9 + 2 * n] == '0' then want = 0 end
for i = 1, n do
  if want <= 0 then break end
  for _, e in ipairs(readgroup(ARGV[8 + i], want, '>')) do
    out[#out + 1] = {i, e[1], e[2], 1}
    want = want - 1
  end
end
return {out, due_in, cursors, redis.call('SMEMBERS', base .. ':levels')}
"""

_TOUCH = r"""
-- ARGV: group, consumer, stream key, entry id, ...: reset the idle time of entries this
-- consumer still holds (XCLAIM JUSTID does not count a delivery).
local n = 0
for i = 3, #ARGV, 2 do
  local key, id = ARGV[i], ARGV[i + 1]
  local p = redis.pcall('XPENDING', key, ARGV[1], id, id, 1)
  if type(p) == 'table' and not p.err and #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, id, 'JUSTID')
    n = n + 1
  end
end
return n
"""

_HOUSEKEEP = r"""
-- ARGV: policy, retention ms, consumer idle ms, move limit, maxlen
-- Moves due delayed messages, forgets expired live subscriptions, deletes idle
-- consumers that hold nothing, and (policy 'acked') trims every stream of the topic
-- below the oldest entry any group still needs and below now - retention.
local base = KEYS[1]
local policy, retention, consumer_idle = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
move_due(base, tonumber(ARGV[4]), ARGV[5])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', base .. ':live', '-inf', now)
local streams = {{base, true}}
for _, l in ipairs(redis.call('SMEMBERS', base .. ':levels')) do
  streams[#streams + 1] = {base .. ':p' .. l, true}
end
for _, g in ipairs(redis.call('SMEMBERS', base .. ':groups')) do
  streams[#streams + 1] = {base .. ':r:' .. g, false}
end
local trimmed = 0
for _, s in ipairs(streams) do
  local key = s[1]
  if redis.call('EXISTS', key) == 1 then
    local fms, fseq = nil, nil
    if s[2] then fms, fseq = now - retention, 0 end
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local g = {}
      for i = 1, #info, 2 do g[info[i]] = info[i + 1] end
      local gms, gseq
      if tonumber(g['pending']) > 0 then
        gms, gseq = parse_id(redis.call('XPENDING', key, g['name'])[2])
      else
        gms, gseq = parse_id(g['last-delivered-id'])
        gseq = gseq + 1
      end
      if fms == nil or gms < fms or (gms == fms and gseq < fseq) then
        fms, fseq = gms, gseq
      end
      for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', key, g['name'])) do
        local cs = {}
        for i = 1, #c, 2 do cs[c[i]] = c[i + 1] end
        if tonumber(cs['pending']) == 0 and tonumber(cs['idle']) > consumer_idle then
          redis.call('XGROUP', 'DELCONSUMER', key, g['name'], cs['name'])
        end
      end
    end
    if policy == 'acked' and fms ~= nil and fms > 0 then
      trimmed = trimmed + redis.call('XTRIM', key, 'MINID', '~',
        string.format('%.0f-%.0f', fms, fseq))
    end
  end
end
return trimmed
"""

_LIVE = r"""
-- KEYS[1]: live zset; ARGV: ttl ms, member...
local expires = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expires, ARGV[i]) end
return #ARGV - 1
"""

_COUNT_LIVE = r"""
-- KEYS[1]: live zset
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')
"""

_POSITION = r"""
-- ARGV: 'latest' or 'earliest'. Returns {levels, start ids} (base stream first, then
-- each level as listed): where a new broadcast reader starts, resolved atomically.
local base = KEYS[1]
local levels = redis.call('SMEMBERS', base .. ':levels')
local keys = {base}
for _, l in ipairs(levels) do keys[#keys + 1] = base .. ':p' .. l end
local ids = {}
for i, key in ipairs(keys) do
  local id = '0-0'
  if ARGV[1] == 'latest' then
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if #last > 0 then id = last[1][1] end
  end
  ids[i] = id
end
return {levels, ids}
"""

_POLL = r"""
-- ARGV: move limit, maxlen. Returns {ms until next delayed message, levels}.
local due_in = move_due(KEYS[1], tonumber(ARGV[1]), ARGV[2])
return {due_in, redis.call('SMEMBERS', KEYS[1] .. ':levels')}
"""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def _script(name: str, body: str, *, prelude: bool = True) -> Script:
    return Script(name, (_PRELUDE if prelude else "") + body)


class _Scripts:
    declare = _script("declare", _DECLARE)
    publish_level = _script("publish_level", _PUBLISH_LEVEL)
    schedule = _script("schedule", _SCHEDULE)
    requeue = _script("requeue", _REQUEUE)
    fetch = _script("fetch", _FETCH)
    touch = _script("touch", _TOUCH, prelude=False)
    housekeep = _script("housekeep", _HOUSEKEEP)
    live = _script("live", _LIVE)
    count_live = _script("count_live", _COUNT_LIVE)
    position = _script("position", _POSITION, prelude=False)
    poll = _script("poll", _POLL)


SCRIPTS = _Scripts()
