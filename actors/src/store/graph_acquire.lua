-- Takes one Graph permit for a mailbox: a slot among its concurrent requests, `cost`
-- requests of its sliding window and `cost` requests of its app's sliding window (Graph's
-- per-app limit across all tenants), unless the mailbox is paused by a Retry-After.
-- KEYS[1] in-flight set (ZSET member = permit id, score = lease expiry µs)
-- KEYS[2] window log (ZSET member = permit id:n, score = request time µs)
-- KEYS[3] pause-until (µs)
-- KEYS[4] the app's window log (as KEYS[2])
-- ARGV[1] max concurrent, ARGV[2] window limit, ARGV[3] window µs, ARGV[4] lease µs,
-- ARGV[5] permit id, ARGV[6] cost (requests this permit stands for),
-- ARGV[7] app window limit, ARGV[8] app window µs
-- Returns 0 when granted, else the µs to wait before asking again.
-- Leases expire, so a daemon that dies holding a slot frees it after the lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then
  return pause - now
end
local max_concurrent = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local cost = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= max_concurrent then
  return 5000
end
-- µs until `cost` more requests fit in the sliding window `log` of `limit` per `span` µs;
-- 0 when they fit now.
local function window_wait(log, limit, span)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
  local used = redis.call('ZCARD', log)
  if used + cost <= limit then
    return 0
  end
  local oldest = redis.call('ZRANGE', log, 0, used + cost - limit - 1, 'WITHSCORES')
  local free_at = tonumber(oldest[#oldest]) + span
  return math.max(free_at - now, 1000)
end
local app_window = tonumber(ARGV[8])
local wait = math.max(window_wait(KEYS[2], limit, window),
                      window_wait(KEYS[4], tonumber(ARGV[7]), app_window))
if wait > 0 then
  return wait
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
for i = 1, cost do
  redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. i)
  redis.call('ZADD', KEYS[4], now, ARGV[5] .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[1], math.floor(lease / 1000) + 1000)
redis.call('PEXPIRE', KEYS[2], math.floor(window / 1000) + 1000)
redis.call('PEXPIRE', KEYS[4], math.floor(app_window / 1000) + 1000)
return 0
