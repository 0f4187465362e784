-- Takes one permit of a shared rate budget (GCRA with no burst: one permit per interval).
-- KEYS[1] theoretical arrival time (µs since the epoch), KEYS[2] pause-until (µs).
-- ARGV[1] emission interval in µs.
-- Returns 0 when the permit is granted, else the µs to wait before asking again.
-- Redis' own clock is used, so every daemon sharing this Redis shares one timeline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then
  return pause - now
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then
  return tat - now
end
local interval = tonumber(ARGV[1])
local ttl_ms = math.floor(interval / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', now + interval), 'PX', ttl_ms)
return 0
