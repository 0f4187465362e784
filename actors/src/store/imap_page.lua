-- Writes one fetched chunk of an IMAP folder atomically: its messages into the inbound stream
-- and the source's cursor (UIDVALIDITY, last UID), only while the caller holds the source's
-- lease (the token fences a poller that lost it). Redis runs a script as one transaction, like
-- MULTI/EXEC: a crash leaves either the whole chunk and its cursor, or neither.
-- (large.lua is prepended: xadd_inbound.)
-- KEYS[1] lease, KEYS[2] inbound stream, KEYS[3] cursor hash, KEYS[4] today's intake counts
-- (hash: source → messages added), KEYS[5] the large-entries counter (store/large.rs)
-- ARGV[1] lease token, ARGV[2] UIDVALIDITY, ARGV[3] last UID after this chunk, ARGV[4] now ms,
-- ARGV[5] source name, ARGV[6] after-delivery ('1' or ''),
-- then per message: UID, INTERNALDATE (RFC 3339 or ''), message (its bytes, or base64), '1' when
-- the message is its bytes ('' for base64), and for a message whose body was not fetched (above
-- imap.max_message_bytes) '{size}:{limit}' and its attachments (JSON) from BODYSTRUCTURE, else
-- '' and '' (the message is then its header only).
-- Only UIDs above the stored last UID of the same UIDVALIDITY are added (a server answering
-- `UID n:*` with the last message when nothing is new cannot make it re-push that message).
-- Returns the number of messages added, or -1 without the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local cursor = redis.call('HMGET', KEYS[3], 'uidvalidity', 'last_uid')
local floor = 0
if cursor[1] == ARGV[2] and cursor[2] then
  floor = tonumber(cursor[2])
end
local added = 0
for i = 7, #ARGV, 6 do
  local uid = tonumber(ARGV[i])
  if uid > floor then
    local fields = {'source', 'imap', 'mailbox', ARGV[5],
      'uid', ARGV[i], 'uidvalidity', ARGV[2]}
    if ARGV[i + 1] ~= '' then
      table.insert(fields, 'internal_date')
      table.insert(fields, ARGV[i + 1])
    end
    if ARGV[6] == '1' then
      table.insert(fields, 'mark_read')
      table.insert(fields, '1')
    end
    if ARGV[i + 4] ~= '' then
      table.insert(fields, 'oversize')
      table.insert(fields, ARGV[i + 4])
      table.insert(fields, 'attachments')
      table.insert(fields, ARGV[i + 5])
    end
    if ARGV[i + 3] == '1' then
      table.insert(fields, 'plain')
      table.insert(fields, '1')
    end
    table.insert(fields, 'payload')
    table.insert(fields, ARGV[i + 2])
    xadd_inbound(KEYS[2], KEYS[5], fields)
    added = added + 1
  end
end
local last = tonumber(ARGV[3])
if last < floor then
  last = floor
end
redis.call('HSET', KEYS[3], 'uidvalidity', ARGV[2], 'last_uid', last, 'updated_ms', ARGV[4])
if added > 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[5], added)
  redis.call('EXPIRE', KEYS[4], 172800)
end
return added
