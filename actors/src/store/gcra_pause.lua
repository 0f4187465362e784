-- Pauses every holder of a rate budget (a 429's Retry-After), never shortening a longer pause.
-- KEYS[1] pause-until (µs since the epoch). ARGV[1] pause length in µs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if want > cur then
  local ttl_ms = math.floor(tonumber(ARGV[1]) / 1000) + 1000
  redis.call('SET', KEYS[1], string.format('%.0f', want), 'PX', ttl_ms)
end
return 0
