-- Builds agents:available and its per-index sets (availability_lib.lua) from the agent
-- records: a node starting against a Redis from before they existed runs it. A Redis that
-- has agents:available (the scripts keep it exact), or no open stream (then no agent can
-- be in it), is left as it is, unless ARGV[1] is 'force'. Costs O(registered agents), at
-- a node's start only.
--
-- ARGV[1]      '' (build if missing) or 'force'
-- Returns      the number of agents in agents:available after a build, or -1 when none
--              was needed
if ARGV[1] ~= 'force' and (redis.call('EXISTS', K.available) == 1
    or redis.call('HLEN', K.connected) == 0) then
  return -1
end
local count = 0
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents_all)) do
  local index_keys = redis.call('HGET', K.agent .. agent_id, 'index_keys')
  available_clear(agent_id, index_keys)
  if available_refresh(agent_id) then
    count = count + 1
  end
end
return count
