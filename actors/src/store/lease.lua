-- Takes or renews a lease. KEYS[1] lease key. ARGV[1] holder token, ARGV[2] ttl ms,
-- ARGV[3] (optional) '0': only look, do not take a free lease.
-- Returns 1 when the caller holds the lease (taken now or renewed), 0 when another does, 2 when
-- it is free and was left free (ARGV[3] = '0').
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  if ARGV[3] == '0' then
    return 2
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
