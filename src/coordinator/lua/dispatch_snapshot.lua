-- Everything a dispatch pass starts from, read at one moment: which requirements classes
-- have tasks waiting at each priority, the cluster's strategy and the strategies' shared
-- state, and every agent that has its assignment stream open on a live node and is in
-- agents:active, as the record fields the dispatcher decodes. Whether each agent is ACTIVE,
-- live by heartbeat and has a free slot is decided by the caller from these fields (the
-- assignment script checks again). With no task waiting, no agent is read.
--
-- ARGV[1]      n, the number of priorities
-- ARGV[2..n+1] priority names, most urgent first
-- ARGV[n+2..]  the agent record fields to return, in this order
-- Returns      {now_ms, stored strategy or '', balancer state or '',
--               {{classes of priority 1}, ..., {classes of priority n}},
--               {{fields of agent 1}, {fields of agent 2}, ...}}
local priority_count = tonumber(ARGV[1])
local fields = {}
for i = priority_count + 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end

local classes = {}
local waiting = false
for i = 2, priority_count + 1 do
  classes[#classes + 1] = redis.call('SMEMBERS', K.classes .. ARGV[i])
  waiting = waiting or #classes[#classes] > 0
end

local agents = {}
local node_alive = {}
local connected = waiting and redis.call('HGETALL', K.connected) or {}  -- none needed
for i = 1, #connected, 2 do
  local agent_id = connected[i]
  local node_id = string.match(connected[i + 1], '^(%S+)')
  if node_alive[node_id] == nil then
    node_alive[node_id] = redis.call('EXISTS', K.node .. node_id) == 1
  end
  if node_alive[node_id] and redis.call('SISMEMBER', K.active, agent_id) == 1 then
    agents[#agents + 1] = redis.call('HMGET', K.agent .. agent_id, unpack(fields))
  end
end

return {
  now_ms(),
  redis.call('GET', K.balancing_strategy) or '',
  redis.call('GET', K.balancer_state) or '',
  classes,
  agents,
}
