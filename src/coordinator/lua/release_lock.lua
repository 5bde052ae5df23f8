-- Releases a lock only if this holder still owns it (a lock that expired and was taken by
-- another node must not be deleted).
--
-- KEYS[1]      the lock
-- ARGV[1]      the holder's token
-- Returns      1 when released, else 0
local lock = KEYS[1]
local token = ARGV[1]

if redis.call('GET', lock) == token then
  return redis.call('DEL', lock)
end
return 0
