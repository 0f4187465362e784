-- Takes one permit of a shared rate budget (GCRA with no burst: one permit per interval).
-- KEYS[1] theoretical arrival time (µs since the epoch), KEYS[2] pause-until (µs), KEYS[3] the
-- log of the last minute's grants (sorted set by grant time, for the console's budget use).
-- ARGV[1] emission interval in µs, ARGV[2] lateness tolerance in µs.
-- Returns 0 when the permit is granted, else the µs to wait before asking again.
-- Redis' own clock is used, so every daemon sharing this Redis shares one timeline.
--
-- A caller that comes back slightly late (timer overshoot, a round trip) keeps the schedule
-- (next = tat + interval) instead of pushing it back, so the budget is used to within a
-- fraction of a percent; one later than the tolerance restarts it from now. The tolerance is
-- kept well under the window margin, so no 60-second window can hold more than the limit.
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
local tolerance = tonumber(ARGV[2])
local next = now + interval
if now - tat <= tolerance then
  next = tat + interval
end
local ttl_ms = math.floor(interval / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', ttl_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000000)
redis.call('ZADD', KEYS[3], now, string.format('%.0f:%d', now, redis.call('ZCARD', KEYS[3])))
redis.call('PEXPIRE', KEYS[3], 61000)
return 0
