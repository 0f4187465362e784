-- Moves up to ARGV[1] of the oldest parked entries of one mailbox back to the inbound stream,
-- each in one step with its removal from the parked stream (a script runs as one transaction:
-- an entry is in exactly one of the two streams, whatever crashes).
-- (large.lua is prepended: xadd_inbound.)
-- KEYS[1] the mailbox's parked stream, KEYS[2] the inbound stream, KEYS[3] the large-entries
-- counter (store/large.rs).
-- ARGV[1] how many, ARGV[2] '1' to flag the moved entries as probes (tried against Graph even
-- while their mailbox is parked).
-- Returns the number of entries moved.
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
for _, e in ipairs(entries) do
  local fields = e[2]
  local args = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= 'probe' then
      args[#args + 1] = fields[i]
      args[#args + 1] = fields[i + 1]
    end
  end
  if ARGV[2] == '1' then
    args[#args + 1] = 'probe'
    args[#args + 1] = '1'
  end
  xadd_inbound(KEYS[2], KEYS[3], args)
  redis.call('XDEL', KEYS[1], e[1])
end
return #entries
