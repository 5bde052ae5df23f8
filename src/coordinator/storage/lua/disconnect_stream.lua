-- Records that an agent's stream closed, unless a newer stream replaced it. An agent that
-- holds tasks enters agents:disconnected: if it does not come back within the grace period
-- the reaper gives its tasks to other agents.
--
-- ARGV[1]      agent_id
-- ARGV[2]      node_id of the closed stream
-- ARGV[3]      session id of the closed stream
-- Returns      1 when the stream was the agent's current one, else 0
local agent_id = ARGV[1]
local node_id = ARGV[2]
local session_id = ARGV[3]

if redis.call('HGET', K.connected, agent_id) ~= node_id .. ' ' .. session_id then
  return 0
end
redis.call('HDEL', K.connected, agent_id)
local agent_key = K.agent .. agent_id
if redis.call('EXISTS', agent_key) == 1 then
  redis.call('HSET', agent_key, 'node_id', '')
end
available_refresh(agent_id)
if redis.call('SCARD', K.agent_tasks .. agent_id) > 0 then
  redis.call('ZADD', K.disconnected, now_ms(), agent_id)
end
return 1
