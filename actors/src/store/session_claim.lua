-- Claims session:current for a new session unless one is running or draining.
-- KEYS[1] session:current, ARGV[1] new session id. Returns 1 when claimed, 0 otherwise.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' or status == 'draining' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'running', 'id', ARGV[1])
return 1
