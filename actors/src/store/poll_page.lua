-- Writes one polled page atomically: the new messages into the inbound stream and the
-- mailbox's cursor, only while the caller holds the mailbox's lease (the lease token is the
-- fence: a poller that lost its lease cannot write). Redis runs a script as one transaction,
-- like MULTI/EXEC: a crash leaves either the whole page and its cursor, or neither.
-- (large.lua and copies_ended.lua are prepended: count_if_large, end_copy.)
-- KEYS[1] lease, KEYS[2] inbound stream, KEYS[3] cursor hash, KEYS[4] today's intake counts
-- (hash: source → messages added), KEYS[5] the Graph mark-read stream, KEYS[6] the waiting
-- follow-ups of later copies, KEYS[7] the large-entries counter (store/large.rs), KEYS[8] the
-- idempotency marks (hash: key → digest, the BatchProcessor's, set when a key went to MS4,
-- maybe by another way, e.g. a webhook ref; store/marks.rs), then ARGV[8] end-state day hashes
-- (store/copies.rs), then per message, in page order, its intake mark
-- (queued:{idempotency key}) and, when ARGV[12] is '1', its idempotency mark as versions before
-- the marks hash wrote it (seen:{idempotency key}).
-- ARGV[1] lease token, ARGV[2] cursor link ('' clears; delta mode only), ARGV[3] cursor phase,
-- ARGV[4] now ms, ARGV[5] mailbox, ARGV[6] mark_read ('1' or ''; '1' is unread mode, which
-- keeps no link), ARGV[7] mark ttl s, ARGV[8] end-state day hashes, ARGV[9] unread mode's floor
-- ms and ARGV[10] the start ms of the listing it holds for (both '' but on the last page of a
-- listing that saw a message or had a floor: left as they are), ARGV[11] the start ms of a
-- sweep this page ends ('' leaves it), ARGV[12] '1' when the marks of versions before are read,
-- then per message four: its JSON, content digest, idempotency key and Graph id (the last only
-- in unread mode, '' otherwise).
-- Either mark holds the digest (the intake mark also the Graph id, after a space): a key queued
-- or delivered before with the same digest (or the legacy '1') is a repeat and skipped; with
-- another digest it is another message reusing the Message-ID, queued for the BatchProcessor to
-- deliver under its own key. In unread mode a repeat with another Graph id is a later copy of
-- the message (the same mail again, a distribution list's copy): it is marked read as its first
-- copy ends (end_copy), never before MS4 accepted the first copy.
-- Every key the script touches is declared in KEYS, so on a Redis Cluster it is checked
-- against the slot the script runs on (they all share the prefix's hash tag).
-- An entry names no `source` (graph) nor `kind` (message): readers take both by default, and
-- each field costs Redis and the processor a copy and a parse a message.
-- Returns the number of messages added (repeats are skipped), or -1 without the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local added = 0
local day_count = tonumber(ARGV[8])
local days = {}
for i = 1, day_count do
  days[i] = KEYS[8 + i]
end
local first = 8 + day_count
local stride = ARGV[12] == '1' and 2 or 1
local count = (#KEYS - first) / stride
-- The intake marks (and marks of versions before) of every message, read in one MGET
-- (KEYS[first + 1..] in order), and their idempotency marks in one HMGET, instead of a call
-- each (issue 14: a call from Lua costs more than the read). `set_here` holds the intake marks
-- this script sets, so that a key twice on one page sees its first copy's mark, as it did when
-- each message read its own. (A page holds at most 1,000 messages: 2,000 keys, well within
-- what unpack takes.)
local marks = {}
local handed_off = {}
if count > 0 then
  marks = redis.call('MGET', unpack(KEYS, first + 1))
  local keys = {}
  for n = 1, count do
    keys[n] = ARGV[11 + 4 * n]
  end
  handed_off = redis.call('HMGET', KEYS[8], unpack(keys))
end
local set_here = {}
for n = 1, count do
  local json, digest = ARGV[9 + 4 * n], ARGV[10 + 4 * n]
  local key, id = ARGV[11 + 4 * n], ARGV[12 + 4 * n]
  local queued = KEYS[first + stride * (n - 1) + 1]
  local mark = set_here[queued] or marks[stride * (n - 1) + 1] or handed_off[n]
    or (stride == 2 and marks[2 * n])
  local add = false
  if not mark then
    local value = digest
    if id ~= '' then
      value = digest .. ' ' .. id
    end
    redis.call('SET', queued, value, 'EX', ARGV[7])
    set_here[queued] = value
    add = true
  else
    local mark_digest, mark_id = string.match(mark, '^(%S*) ?(.*)$')
    if mark_digest ~= digest and mark ~= '1' and digest ~= '' then
      add = true
    elseif ARGV[6] == '1' and mark_id ~= id then
      end_copy(days, KEYS[6], KEYS[5], key, 'graph', ARGV[5], id, ARGV[4])
    end
  end
  if add then
    -- The JSON, the mailbox, and 64 bytes for the field names and the other values.
    count_if_large(KEYS[7], #json + #ARGV[5] + 64)
    if ARGV[6] == '1' then
      redis.call('XADD', KEYS[2], '*', 'mailbox', ARGV[5], 'mark_read', '1', 'payload', json)
    else
      redis.call('XADD', KEYS[2], '*', 'mailbox', ARGV[5], 'payload', json)
    end
    added = added + 1
  end
end
if ARGV[6] == '1' then
  -- Unread mode: the listing's mark, only once the listing is complete (a listing cut short
  -- leaves the mark before it, so the next one lists at least what it would have).
  if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[3], 'unread_floor_ms', ARGV[9], 'unread_listed_ms', ARGV[10],
      'updated_ms', ARGV[4])
  end
  if ARGV[11] ~= '' then
    redis.call('HSET', KEYS[3], 'unread_swept_ms', ARGV[11], 'updated_ms', ARGV[4])
  end
elseif ARGV[2] == '' then
  redis.call('DEL', KEYS[3])
else
  redis.call('HSET', KEYS[3], 'link', ARGV[2], 'phase', ARGV[3], 'updated_ms', ARGV[4])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[5], added)
  redis.call('EXPIRE', KEYS[4], 172800)
end
return added
