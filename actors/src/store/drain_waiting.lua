-- Follow-ups waiting for their first copy's end state (copies_end.lua): those whose first copy
-- has ended now are queued (accepted by MS4), or get their dead-letter end queued (the first
-- was dead-lettered: the copy ends as it did, by the source's after_dead_letter); those
-- waiting longer than the idempotency marks live are dropped (the first copy's end is no
-- longer known). Looks at up to ARGV[3] keys from cursor ARGV[4].
-- KEYS[1] waiting hash, KEYS[2] Graph mark-read stream, KEYS[3] IMAP after-delivery stream,
-- KEYS[4..] the end-state hashes of the days a first copy may have ended (newest first).
-- ARGV[1] now ms, ARGV[2] give up after ms, ARGV[3] count, ARGV[4] cursor.
-- Returns {next cursor, queued, ended as a dead letter because the first copy was, given up}.
local days = {unpack(KEYS, 4)}

local now, give_up = tonumber(ARGV[1]), tonumber(ARGV[2])
local scan = redis.call('HSCAN', KEYS[1], ARGV[4], 'COUNT', ARGV[3])
local queued, dead, expired = 0, 0, 0
local found = scan[2]
for i = 1, #found, 2 do
  local key, list = found[i], cjson.decode(found[i + 1])
  local state = first_copy_ended(days, key)
  if state == '1' then
    for _, f in ipairs(list) do
      local stream = KEYS[2]
      if f[1] == 'imap' then
        stream = KEYS[3]
      end
      redis.call('XADD', stream, '*', 'mailbox', f[2], 'message_id', f[3])
      queued = queued + 1
    end
    redis.call('HDEL', KEYS[1], key)
  elseif state == '0' then
    for _, f in ipairs(list) do
      local stream = KEYS[2]
      if f[1] == 'imap' then
        stream = KEYS[3]
      end
      redis.call('XADD', stream, '*', 'mailbox', f[2], 'message_id', f[3], 'end', 'dead_letter')
    end
    dead = dead + #list
    redis.call('HDEL', KEYS[1], key)
  elseif now - list[1][4] > give_up then
    expired = expired + #list
    redis.call('HDEL', KEYS[1], key)
  end
end
return {scan[1], queued, dead, expired}
