-- Queues webhook refs (mailbox + Graph message id) in the inbound stream, each at most once:
-- a ref whose mark is set (the same message notified again, in this POST or an earlier one,
-- within the mark's lifetime) is skipped before it costs a Graph GET. Refused whole while the
-- backlog (inbound entries + outbound records, an outbound entry counted as a full batch) is
-- above the limit. Runs as one transaction.
-- (large.lua is prepended: xadd_inbound.)
-- KEYS[1] inbound stream, KEYS[2] outbound stream, KEYS[3] today's intake counts (hash:
-- mailbox → messages added), KEYS[4] the large-entries counter (store/large.rs), then one ref
-- mark per ref.
-- ARGV[1] mark ttl s, ARGV[2] max backlog, ARGV[3] records an outbound entry counts for (one
-- batch), then per ref: ARGV[2 + 2n] mailbox, ARGV[3 + 2n] id.
-- Returns {0, added} or, over the backlog, {1, backlog} (nothing written).
local backlog = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) * tonumber(ARGV[3])
if backlog > tonumber(ARGV[2]) then
  return {1, backlog}
end
local added = 0
for n = 1, #KEYS - 4 do
  if redis.call('SET', KEYS[4 + n], '1', 'NX', 'EX', ARGV[1]) then
    xadd_inbound(KEYS[1], KEYS[4], {'kind', 'ref', 'mailbox', ARGV[2 + 2 * n],
      'message_id', ARGV[3 + 2 * n]})
    redis.call('HINCRBY', KEYS[3], ARGV[2 + 2 * n], 1)
    added = added + 1
  end
end
if added > 0 then
  redis.call('EXPIRE', KEYS[3], 172800)
end
return {0, added}
