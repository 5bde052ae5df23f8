-- Everything a dispatch pass starts from, read at one moment: which requirements classes
-- have tasks waiting at each priority and the first tasks of each (as lua/queue_heads.lua
-- returns them), the cluster's strategy and the strategies' shared state, and every agent
-- that has its assignment stream open on a live node and is in agents:active, as the
-- record fields the dispatcher decodes. Whether each agent is live by heartbeat is decided
-- by the caller from these fields (the assignment script checks everything again). With
-- no task waiting no agent is read (unless for a view), and with no ACTIVE agent with a
-- free slot no task.
--
-- ARGV[1]      '' to read only; 'view' to read only, the agents even with no task waiting
--              (a node's view, which it assigns tasks at submit from); or 'begin' or
--              'again' to take the dispatch turn first (task_lib.lua's dispatch_turn):
--              without the turn the reply is false and nothing is read
-- ARGV[2]      this node's token for the turn's lock (with ARGV[1])
-- ARGV[3]      the lock's time-to-live in milliseconds (with ARGV[1])
-- ARGV[4]      most tasks per class (fewer when the free slots are fewer)
-- ARGV[5]      n, the number of priorities
-- ARGV[6..n+5] priority names, most urgent first
-- ARGV[n+6..]  the agent record fields to return, in this order (with status,
--              active_tasks and max_concurrency among them)
-- Returns      {now_ms, stored strategy or '', balancer state or '',
--               {{classes of priority 1}, ..., {classes of priority n}},
--               {{fields of agent 1}, {fields of agent 2}, ...},
--               {{heads of class 1 of priority 1, ...}, ..., {... of priority n}},
--               the most tasks read per class}
--              where the heads of a class are {{task_id, seq, requirements, strategy,
--              routing_key, avoid_agent_id}, ...} as in lua/queue_heads.lua (none without
--              agents)
local turn_action = ARGV[1]
local limit = tonumber(ARGV[4])
local priority_count = tonumber(ARGV[5])
local first_priority = 6
local last_priority = priority_count + 5
local for_view = turn_action == 'view'
if turn_action ~= '' and not for_view and dispatch_turn(turn_action, ARGV[2], ARGV[3]) == 0 then
  return false  -- another node's turn: it passes again (the 'wanted' flag)
end
local fields = {}
local at = {}
for i = last_priority + 1, #ARGV do
  fields[#fields + 1] = ARGV[i]
  at[ARGV[i]] = #fields
end

local classes = {}
local waiting = false
for i = first_priority, last_priority do
  classes[#classes + 1] = redis.call('SMEMBERS', K.classes .. ARGV[i])
  waiting = waiting or #classes[#classes] > 0
end

local agents = {}
local free_slots = 0
local node_alive = {}
local connected = (waiting or for_view) and redis.call('HGETALL', K.connected) or {}
for i = 1, #connected, 2 do
  local agent_id = connected[i]
  local node_id = string.match(connected[i + 1], '^(%S+)')
  if node_alive[node_id] == nil then
    node_alive[node_id] = redis.call('EXISTS', K.node .. node_id) == 1
  end
  if node_alive[node_id] and redis.call('SISMEMBER', K.active, agent_id) == 1 then
    local record = redis.call('HMGET', K.agent .. agent_id, unpack(fields))
    agents[#agents + 1] = record
    if record[at.status] == 'ACTIVE' then
      free_slots = free_slots + math.max(0,
        tonumber(record[at.max_concurrency] or 0) - tonumber(record[at.active_tasks] or 0))
    end
  end
end

-- No more tasks of one class than could be assigned now.
limit = math.min(limit, free_slots)
local heads = {}
for i = first_priority, last_priority do
  local their_heads = {}
  if limit > 0 then  -- with no agent to choose, the tasks are not needed either
    for _, class in ipairs(classes[i - first_priority + 1]) do
      their_heads[#their_heads + 1] = class_heads(ARGV[i], class, '-inf', limit)
    end
  end
  heads[#heads + 1] = their_heads
end

return {
  now_ms(),
  redis.call('GET', K.balancing_strategy) or '',
  redis.call('GET', K.balancer_state) or '',
  classes,
  agents,
  heads,
  limit,
}
