-- (Prepended to the scripts that write inbound entries; LARGE_ENTRY_BYTES is set before it:
-- store/large.rs.)
-- XADDs an entry of `fields` (names and values) to `stream`, and adds 1 to `counter` when its
-- names and values pass LARGE_ENTRY_BYTES, so that readers read it within their byte budget.
local function xadd_inbound(stream, counter, fields)
  local bytes = 0
  for i = 1, #fields do
    bytes = bytes + #fields[i]
  end
  if bytes > LARGE_ENTRY_BYTES then
    redis.call('INCR', counter)
  end
  return redis.call('XADD', stream, '*', unpack(fields))
end
