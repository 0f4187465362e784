-- Writes one polled page atomically: the new messages into the inbound stream and the
-- mailbox's cursor, only while the caller holds the mailbox's lease (the lease token is the
-- fence: a poller that lost its lease cannot write). Redis runs a script as one transaction,
-- like MULTI/EXEC: a crash leaves either the whole page and its cursor, or neither.
-- KEYS[1] lease, KEYS[2] inbound stream, KEYS[3] cursor hash,
-- then one intake mark (queued:{idempotency key}) per message, in page order.
-- ARGV[1] lease token, ARGV[2] cursor link ('' clears), ARGV[3] cursor phase, ARGV[4] now ms,
-- ARGV[5] mailbox, ARGV[6] mark_read ('1' or ''), ARGV[7] mark ttl s,
-- then one message JSON per message: ARGV[7 + n] goes with KEYS[3 + n].
-- Every key the script touches is declared in KEYS, so on a Redis Cluster it is checked
-- against the slot the script runs on (they all share the prefix's hash tag).
-- Returns the number of messages added (already-queued keys are skipped), or -1 without the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local added = 0
for n = 1, #KEYS - 3 do
  if redis.call('SET', KEYS[3 + n], '1', 'NX', 'EX', ARGV[7]) then
    if ARGV[6] == '1' then
      redis.call('XADD', KEYS[2], '*', 'source', 'graph', 'kind', 'message', 'mailbox', ARGV[5],
        'mark_read', '1', 'payload', ARGV[7 + n])
    else
      redis.call('XADD', KEYS[2], '*', 'source', 'graph', 'kind', 'message', 'mailbox', ARGV[5],
        'payload', ARGV[7 + n])
    end
    added = added + 1
  end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[3])
else
  redis.call('HSET', KEYS[3], 'link', ARGV[2], 'phase', ARGV[3], 'updated_ms', ARGV[4])
end
return added
