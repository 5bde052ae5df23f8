-- Records that an agent's StreamAssignments is open on a node: from now on assignments to
-- the agent are announced on that node's channel. A stream the agent had open elsewhere
-- (or on the same node) is told that it was replaced.
--
-- ARGV[1]      agent_id
-- ARGV[2]      node_id
-- ARGV[3]      session id of the new stream
-- Returns      1, or 0 when the agent is not registered
local agent_id = ARGV[1]
local node_id = ARGV[2]
local session_id = ARGV[3]

local agent_key = K.agent .. agent_id
if redis.call('EXISTS', agent_key) == 0 then
  return 0
end
local previous = redis.call('HGET', K.connected, agent_id)
redis.call('HSET', K.connected, agent_id, node_id .. ' ' .. session_id)
redis.call('HSET', agent_key, 'node_id', node_id)
redis.call('ZREM', K.disconnected, agent_id)
available_refresh(agent_id)
if previous then
  local previous_node, previous_session = string.match(previous, '^(%S+) (%S+)$')
  redis.call(K.publish, K.node_channel .. previous_node,
    cjson.encode({kind = 'replaced', agent_id = agent_id, session_id = previous_session}))
end
return 1
