-- Later copies of a message (its key was seen before) end in the state of the first copy: a
-- copy whose first copy MS4 accepted gets its follow-up now (Graph mark read, IMAP \Seen or
-- move); a copy whose first copy was dead-lettered gets its dead-letter end (as the first); a copy
-- whose first copy is still on its way waits in the waiting hash until it ends (drained by
-- drain_waiting.lua). The copies' inbound entries are acknowledged and deleted here, in the
-- same step as their follow-ups.
-- KEYS[1] inbound stream, KEYS[2] Graph mark-read stream, KEYS[3] IMAP after-delivery stream,
-- KEYS[4] waiting hash, KEYS[5..] the end-state hashes of the days a first copy may have ended
-- (newest first).
-- ARGV[1] group, ARGV[2] now ms, then per copy five: entry id, key, source, mailbox, id
-- (source '' for a copy without a follow-up: only acknowledged).
-- Returns {followed up now, waiting, first copy dead-lettered}.
local days = {unpack(KEYS, 5)}

local now, counts = ARGV[2], {0, 0, 0}
for n = 3, #ARGV, 5 do
  local entry, key, source, mailbox, id = ARGV[n], ARGV[n + 1], ARGV[n + 2], ARGV[n + 3], ARGV[n + 4]
  if source ~= '' then
    local stream = KEYS[2]
    if source == 'imap' then
      stream = KEYS[3]
    end
    local ended = end_copy(days, KEYS[4], stream, key, source, mailbox, id, now)
    counts[ended] = counts[ended] + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
end
return counts
