-- Everything a dispatch pass starts from, read at one moment: which requirements classes
-- have tasks waiting at each priority and the first tasks of each (as lua/queue_heads.lua
-- returns them), the cluster's strategy and the strategies' shared state, and every agent that has its assignment stream open on a live node and is in
-- agents:active, as the record fields the dispatcher decodes. Whether each agent is ACTIVE,
-- live by heartbeat and has a free slot is decided by the caller from these fields (the
-- assignment script checks again). With no task waiting, no agent is read.
--
-- ARGV[1]      most tasks per class
-- ARGV[2]      n, the number of priorities
-- ARGV[3..n+2] priority names, most urgent first
-- ARGV[n+3..]  the agent record fields to return, in this order
-- Returns      {now_ms, stored strategy or '', balancer state or '',
--               {{classes of priority 1}, ..., {classes of priority n}},
--               {{fields of agent 1}, {fields of agent 2}, ...},
--               {{heads of class 1 of priority 1, ...}, ..., {... of priority n}}}
--              where the heads of a class are {{task_id, seq, requirements, strategy,
--              routing_key}, ...} as in lua/queue_heads.lua
local limit = tonumber(ARGV[1])
local priority_count = tonumber(ARGV[2])
local fields = {}
for i = priority_count + 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end

local classes = {}
local heads = {}
local waiting = false
for i = 3, priority_count + 2 do
  local priority = ARGV[i]
  local these = redis.call('SMEMBERS', K.classes .. priority)
  local their_heads = {}
  for _, class in ipairs(these) do
    their_heads[#their_heads + 1] = class_heads(priority, class, '-inf', limit)
  end
  classes[#classes + 1] = these
  heads[#heads + 1] = their_heads
  waiting = waiting or #these > 0
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
  heads,
}
