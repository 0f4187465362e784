-- One daemon's heartbeat in its fleet, and the fleet as it stands now.
-- KEYS[1] fleet sorted set (member = daemon instance id, score = its expiry in ms, Redis time).
-- ARGV[1] this daemon's id, ARGV[2] ttl ms.
-- Members whose expiry passed are dead and removed; the set itself expires ttl after the last
-- beat of any member (a fleet whose configuration is gone leaves nothing behind).
-- Returns every live member, this one included.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZRANGE', KEYS[1], 0, -1)
