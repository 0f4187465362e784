-- Writes one polled page atomically: the new messages into the inbound stream and the
-- mailbox's cursor, only while the caller holds the mailbox's lease (the lease token is the
-- fence: a poller that lost its lease cannot write). Redis runs a script as one transaction,
-- like MULTI/EXEC: a crash leaves either the whole page and its cursor, or neither.
-- KEYS[1] lease, KEYS[2] inbound stream, KEYS[3] cursor hash, KEYS[4] today's intake counts
-- (hash: source → messages added), then per message, in page order, its intake mark
-- (queued:{idempotency key}) and its idempotency mark (seen:{idempotency key}: the
-- BatchProcessor's, set when the key went to MS4 by another way, e.g. a webhook ref).
-- ARGV[1] lease token, ARGV[2] cursor link ('' clears), ARGV[3] cursor phase, ARGV[4] now ms,
-- ARGV[5] mailbox, ARGV[6] mark_read ('1' or ''), ARGV[7] mark ttl s,
-- then per message its JSON and its content digest: ARGV[6 + 2n] and ARGV[7 + 2n] go with
-- KEYS[3 + 2n] and KEYS[4 + 2n]. Either mark holds the digest: a key queued or delivered before
-- with the same digest (or the legacy '1') is a repeat and skipped; with another digest it is
-- another message reusing the Message-ID, queued for the BatchProcessor to deliver under its
-- own key.
-- Every key the script touches is declared in KEYS, so on a Redis Cluster it is checked
-- against the slot the script runs on (they all share the prefix's hash tag).
-- Returns the number of messages added (repeats are skipped), or -1 without the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local added = 0
-- Both marks of every message, read in one MGET (KEYS[5..] in order: queued, seen, queued,
-- seen, …) instead of two GETs a message (issue 14: a call from Lua costs more than the read).
-- `set_here` holds the intake marks this script sets, so that a key twice on one page sees
-- its first copy's mark, as it did when each message read its own. (A page holds at most
-- 1,000 messages: 2,000 keys, well within what unpack takes.)
local marks = #KEYS > 4 and redis.call('MGET', unpack(KEYS, 5)) or {}
local set_here = {}
for n = 1, (#KEYS - 4) / 2 do
  local json, digest = ARGV[6 + 2 * n], ARGV[7 + 2 * n]
  local queued = KEYS[3 + 2 * n]
  local mark = set_here[queued] or marks[2 * n - 1] or marks[2 * n]
  local add = false
  if not mark then
    redis.call('SET', queued, digest, 'EX', ARGV[7])
    set_here[queued] = digest
    add = true
  elseif mark ~= digest and mark ~= '1' and digest ~= '' then
    add = true
  end
  if add then
    if ARGV[6] == '1' then
      redis.call('XADD', KEYS[2], '*', 'source', 'graph', 'kind', 'message', 'mailbox', ARGV[5],
        'mark_read', '1', 'payload', json)
    else
      redis.call('XADD', KEYS[2], '*', 'source', 'graph', 'kind', 'message', 'mailbox', ARGV[5],
        'payload', json)
    end
    added = added + 1
  end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[3])
else
  redis.call('HSET', KEYS[3], 'link', ARGV[2], 'phase', ARGV[3], 'updated_ms', ARGV[4])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[5], added)
  redis.call('EXPIRE', KEYS[4], 172800)
end
return added
