-- Removes every trace of an agent: its record, its liveness entry, every index entry, its
-- points on the consistent hash ring, and its open stream, which the node holding it is
-- told to end. (Tasks it holds are given back by the task reaper.)
-- With a heartbeat bound, removes it only if its last heartbeat is at or before the bound
-- (the retention clean-up must not delete an agent that came back meanwhile).
--
-- KEYS[1]      agent hash                agent:{agent_id}
-- KEYS[2]      set of all agents         agents:all
-- KEYS[3]      liveness sorted set       agents:heartbeats
-- KEYS[4..7]   status index sets         ACTIVE (agents:active), BUSY, MAINTENANCE, ERROR
-- KEYS[8]      open streams hash         agents:connected
-- ARGV[1]      agent_id
-- ARGV[2]      heartbeat bound in epoch milliseconds, or '' to remove unconditionally
-- ARGV[3]      prefix of the nodes' pub/sub channels (coordinator:node:)
-- Returns      1 when the agent was removed, 0 when there was nothing (or nothing old) to remove
local agent_key = KEYS[1]
local all_agents = KEYS[2]
local heartbeats = KEYS[3]
local first_status_key = 4
local last_status_key = 7
local connected = KEYS[8]
local agent_id = ARGV[1]
local heartbeat_bound = ARGV[2]
local node_channel_prefix = ARGV[3]

local last_heartbeat_ms = redis.call('ZSCORE', heartbeats, agent_id)
if heartbeat_bound ~= '' and last_heartbeat_ms
    and tonumber(last_heartbeat_ms) > tonumber(heartbeat_bound) then
  return 0
end

local index_keys = redis.call('HGET', agent_key, 'index_keys')
available_clear(agent_id, index_keys)
ring_take(agent_id)
if index_keys then
  for _, key in ipairs(cjson.decode(index_keys)) do
    redis.call('SREM', key, agent_id)
  end
end
for i = first_status_key, last_status_key do
  redis.call('SREM', KEYS[i], agent_id)
end
redis.call('ZREM', heartbeats, agent_id)
local connection = redis.call('HGET', connected, agent_id)
if connection then
  redis.call('HDEL', connected, agent_id)
  local node_id = string.match(connection, '^(%S+)')
  redis.call(K.publish, node_channel_prefix .. node_id,
    cjson.encode({kind = 'deregistered', agent_id = agent_id}))
end
local was_member = redis.call('SREM', all_agents, agent_id)
local deleted = redis.call('DEL', agent_key)
if was_member == 1 or deleted == 1 then
  return 1
end
return 0
