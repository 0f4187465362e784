-- (Prepended to the scripts that write inbound entries; LARGE_ENTRY_BYTES is set before it:
-- store/large.rs.)
-- Adds 1 to `counter` when an inbound entry whose field names and values take `bytes` is large,
-- so that readers read it within their byte budget.
local function count_if_large(counter, bytes)
  if bytes > LARGE_ENTRY_BYTES then
    redis.call('INCR', counter)
  end
end

-- XADDs an entry of `fields` (names and values) to `stream`, counted when it is large.
local function xadd_inbound(stream, counter, fields)
  local bytes = 0
  for i = 1, #fields do
    bytes = bytes + #fields[i]
  end
  count_if_large(counter, bytes)
  return redis.call('XADD', stream, '*', unpack(fields))
end
