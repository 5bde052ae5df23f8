-- Builds agents:available, its per-index sets and round robin's rotations
-- (availability_lib.lua) from the agent records, and the consistent hash ring: a node
-- starting against a Redis from before they existed runs it. The available sets and
-- rotations are built when agents:available or agents:rotation is missing while a stream
-- is open (no agent can be in them otherwise); the ring when agents:ring is missing while
-- agents are registered; both with ARGV[1] 'force'. The scripts keep them exact after.
-- Costs O(registered agents), at a node's start only.
--
-- ARGV[1]      '' (build what is missing) or 'force'
-- Returns      the number of agents in agents:available after a build, or -1 when none
--              was needed
local force = ARGV[1] == 'force'
local build_available = force or ((redis.call('EXISTS', K.available) == 0
    or redis.call('EXISTS', K.rotation) == 0) and redis.call('HLEN', K.connected) > 0)
local build_ring = force or (redis.call('EXISTS', K.ring) == 0
    and redis.call('SCARD', K.agents_all) > 0)
if not build_available and not build_ring then
  return -1
end
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents_all)) do
  local index_keys = redis.call('HGET', K.agent .. agent_id, 'index_keys')
  if build_available then
    available_clear(agent_id, index_keys)
    available_refresh(agent_id)
  end
  if build_ring and index_keys then  -- a registered agent (its record has index_keys)
    ring_put(agent_id)
  end
end
return redis.call('ZCARD', K.available)
