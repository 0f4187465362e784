-- Reads a consumer group's stream entries bounded in bytes as well as in count: XREADGROUP,
-- XAUTOCLAIM and XREADGROUP of one's own pending entries all count entries, not bytes, so a
-- COUNT of 500 entries of 30 MB each would answer 15 GB. This script looks at each next entry
-- (XRANGE of that one id, inside Redis) before taking it, and stops before the entry that would
-- pass the byte budget. The first entry is always taken, whatever its size, so a single entry
-- above the budget still moves (alone).
-- KEYS[1] stream, KEYS[2] (optional) its large-entries counter (store/large.rs): deleted when
-- a 'new' read took every entry up to the end of the stream (nothing large is left unread).
-- ARGV[1] group, ARGV[2] consumer,
-- ARGV[3] mode:
--   'new'   entries never delivered to the group (XREADGROUP '>'),
--   'own'   this consumer's pending entries after ARGV[4] (its own re-reads after a restart),
--   'claim' entries of any consumer idle at least ARGV[7] ms after ARGV[4] (they are claimed
--           with XCLAIM, as XAUTOCLAIM would),
-- ARGV[4] cursor: the last id returned by the previous call of this scan ('0-0' to start),
-- ARGV[5] most entries, ARGV[6] most bytes, ARGV[7] min idle ms ('claim' only),
-- ARGV[8] '1': even the first entry must fit (a call that tops up a read already made).
-- An entry's size is the length of its id, field names and values.
-- Returns {cursor, entries, gone}: the cursor for the next call of the scan ('0-0' when the scan
-- reached the end), the entries as XRANGE gives them, and the ids of pending entries whose entry
-- was deleted meanwhile ('own' and 'claim'; they are acknowledged here).
-- Mode 'new' returns {'full' or '0-0', n, before} instead: 'full' when a next entry was there
-- but did not fit; n entries were delivered to the consumer, all of them after id `before`, so
-- the caller reads them with XREADGROUP … STREAMS stream <before> (its own pending entries after
-- that id are exactly these), which spares converting them through Lua once more.
-- Looking at an entry copies it into Lua: ~75 ms for 33 MB here, so callers read a first entry
-- with a plain XREADGROUP and use this script to top up (store/read_budget.rs).
local stream, group, consumer, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local cursor = ARGV[4]
local max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])

local function size_of(entry)
  local n = #entry[1]
  for _, v in ipairs(entry[2]) do
    n = n + #v
  end
  return n
end

local function start_after(id)
  if id == '0-0' or id == '0' then
    return '-'
  end
  return '(' .. id
end

local taken, bytes = {}, 0
local function fits(entry)
  local size = size_of(entry)
  if (#taken > 0 or ARGV[8] == '1') and bytes + size > max_bytes then
    return false
  end
  bytes = bytes + size
  table.insert(taken, entry)
  return true
end

-- Runs `head.. ids ..tail` in slices (unpack has a stack limit).
local function each_slice(list, head, tail)
  for i = 1, #list, 500 do
    local args = {}
    for _, h in ipairs(head) do
      table.insert(args, h)
    end
    for j = i, math.min(i + 499, #list) do
      table.insert(args, list[j])
    end
    for _, t in ipairs(tail or {}) do
      table.insert(args, t)
    end
    redis.call(unpack(args))
  end
end

if mode == 'new' then
  local last, before, entries_read = nil, nil, nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #g, 2 do
      fields[g[i]] = g[i + 1]
    end
    if fields['name'] == group then
      last = fields['last-delivered-id']
      entries_read = fields['entries-read']
    end
  end
  if not last then
    return redis.error_reply('NOGROUP no consumer group ' .. group .. ' on ' .. stream)
  end
  before = last
  -- Looks at one entry first, then at up to 32 at a time while the entries seen are small
  -- enough that 32 of the largest would fit twice over (a run of small entries costs one XRANGE
  -- per 32, a large entry is still looked at alone or with a few others).
  local full = '0-0'
  local largest, step, done, at_end = 1, 1, false, false
  while not done and #taken < max_count do
    local nxt = redis.call('XRANGE', stream, start_after(last), '+', 'COUNT', step)
    if #nxt == 0 then
      at_end = true
      break
    end
    for _, e in ipairs(nxt) do
      if #taken >= max_count then
        done = true
        break
      end
      local size = size_of(e)
      if not fits(e) then
        full = 'full'
        done = true
        break
      end
      if size > largest then
        largest = size
      end
      last = e[1]
    end
    if #nxt < step then
      at_end = not done
      break
    end
    step = math.max(1, math.min(32, max_count - #taken,
      math.floor((max_bytes - bytes) / (2 * largest))))
  end
  if at_end and KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
  if #taken == 0 then
    return {full, 0, before}
  end
  -- Delivers exactly the entries looked at (nothing runs between the calls of a script), as
  -- XREADGROUP '>' would: each becomes this consumer's pending entry and the group's
  -- last-delivered id moves past them. XCLAIM … FORCE JUSTID does the first by id, without
  -- copying every entry into Lua a second time (an XREADGROUP here would: half the script's
  -- cost for 1 KB entries), XGROUP SETID the second (keeping the group's read counter, behind
  -- its lag, where Redis knows it).
  local ids = {}
  for i, e in ipairs(taken) do
    ids[i] = e[1]
  end
  each_slice(ids, {'XCLAIM', stream, group, consumer, 0}, {'FORCE', 'JUSTID'})
  if type(entries_read) == 'number' then
    redis.call('XGROUP', 'SETID', stream, group, last, 'ENTRIESREAD', entries_read + #taken)
  else
    redis.call('XGROUP', 'SETID', stream, group, last)
  end
  return {full, #taken, before}
end

-- 'own' and 'claim': walk the pending entries list after the cursor.
local pending
if mode == 'own' then
  pending = redis.call('XPENDING', stream, group, start_after(cursor), '+', max_count, consumer)
elseif mode == 'claim' then
  pending = redis.call('XPENDING', stream, group, 'IDLE', tonumber(ARGV[7]),
    start_after(cursor), '+', max_count)
else
  return redis.error_reply('ERR read_budget: unknown mode ' .. tostring(mode))
end
local gone, ids = {}, {}
local next_cursor = cursor
local stopped = false
for _, p in ipairs(pending) do
  local id = p[1]
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then
    table.insert(gone, id)
  elseif fits(e[1]) then
    table.insert(ids, id)
  else
    stopped = true
    break
  end
  next_cursor = id
end
if not stopped and #pending < max_count then
  -- The scan reached the end of the pending entries.
  next_cursor = '0-0'
end
each_slice(gone, {'XACK', stream, group})
-- Claims them (mode 'claim') or resets their idle time (mode 'own'): either way no other
-- consumer takes them as abandoned while this one works on them.
local min_idle = 0
if mode == 'claim' then
  min_idle = tonumber(ARGV[7])
end
each_slice(ids, {'XCLAIM', stream, group, consumer, min_idle}, {'JUSTID'})
return {next_cursor, taken, gone}
