-- Takes turns at dispatching: one node at a time runs dispatch passes, and no request for a
-- pass is lost. A node asks with 'begin': it gets the lock, or leaves the 'wanted' flag for
-- the node holding it. The holder, after each pass, asks with 'end': if the flag was set
-- meanwhile it keeps the lock and passes again, else it releases the lock. A holder asked
-- for a pass on its own node meanwhile says 'again' instead: it keeps the lock and passes
-- again (or, if the lock expired meanwhile, asks as with 'begin'). A holder that stops or
-- fails mid-turn hands the lock back with 'release', leaving the flag for others.
--
-- KEYS[1]      the dispatch lock          coordinator:lock:dispatch
-- KEYS[2]      the 'wanted' flag          coordinator:dispatch:wanted
-- ARGV[1]      'begin', 'end', 'again' or 'release'
-- ARGV[2]      this node's token for the lock
-- ARGV[3]      lock time-to-live in milliseconds (a holder that dies frees it by then)
-- Returns      1: run a pass now (the lock is this node's); 0: do nothing more
local lock = KEYS[1]
local wanted = KEYS[2]
local action = ARGV[1]
local token = ARGV[2]
local ttl_ms = ARGV[3]

if action == 'again' then
  if redis.call('GET', lock) == token then
    redis.call('DEL', wanted)  -- the pass about to run serves every request so far
    redis.call('PEXPIRE', lock, ttl_ms)
    return 1
  end
  action = 'begin'  -- the lock expired meanwhile: ask like any other node
end

if action == 'begin' then
  if redis.call('SET', lock, token, 'NX', 'PX', ttl_ms) then
    redis.call('DEL', wanted)  -- the pass about to run serves every request so far
    return 1
  end
  redis.call('SET', wanted, '1')  -- the holder passes again when it sees this
  return 0
end

if redis.call('GET', lock) ~= token then
  return 0  -- the lock expired mid-pass and another node took over: it sees the flag
end
if action == 'release' then
  redis.call('DEL', lock)
  return 0
end
-- 'end'
if redis.call('DEL', wanted) == 1 then
  redis.call('PEXPIRE', lock, ttl_ms)
  return 1
end
redis.call('DEL', lock)
return 0
