-- Everything a dispatch pass starts from, read at one moment: which requirements classes
-- have tasks waiting at each priority and the first tasks of each (as lua/queue_heads.lua
-- returns them), the cluster's strategy and the strategies' shared state, and the agents
-- the pass may assign to, as the record fields the dispatcher decodes. Whether each agent
-- is live by heartbeat is decided by the caller from these fields (the assignment script
-- checks everything again). With no task waiting no agent is read (unless for a view), and
-- with no agent read no task.
--
-- The agents are not all of them: for each class with tasks waiting, its least loaded
-- agents with a free slot (agents:available, availability_lib.lua), as many as it has tasks
-- waiting (at most ARGV[4]) and ARGV[5] more, read from the smallest of the available sets
-- of the class's index sets (type, capabilities, services, labels) and kept if in all of
-- them and streaming from a live node; and the ARGV[5] least loaded of all with a free
-- slot (the snapshot becomes the node's view, which assigns tasks of any class at
-- submit); a view's read takes full ones too when fewer are free (a view counts the
-- slots its node's reports free). So a
-- pass costs O(classes x log agents + agents read), whatever the number of agents, and a
-- class that few agents fit finds them.
--
-- ARGV[1]      '' to read only (every partition); 'view' to read only, the agents even
--              with no task waiting (a node's view, which it assigns tasks at submit
--              from); or 'begin' or 'again' to take the dispatch turns first
--              (task_lib.lua's take_turns) of the partitions with tasks waiting, and read
--              only those this node holds then: holding none, the reply is false and
--              nothing is read
-- ARGV[2]      this node's token for the turns' locks (with ARGV[1])
-- ARGV[3]      the locks' time-to-live in milliseconds (with ARGV[1])
-- ARGV[4]      most tasks per class (fewer when the free slots are fewer)
-- ARGV[5]      agents read beyond a class's waiting tasks (a view reads this many)
-- ARGV[6]      a number in [0, 1): where in a band of agents tied at the lowest load
--              to start reading (0: at its first agent_id)
-- ARGV[7]      this node's own partition (its node_id: where its submits queue tasks)
-- ARGV[8]      h, the number of partitions whose turn this node holds already ('again':
--              those it does not take again are handed back)
-- ARGV[9..h+8] those partitions
-- ARGV[h+9]    n, the number of priorities
-- ARGV[h+10..] n priority names, most urgent first
-- then         the agent record fields to return, in this order (with status,
--              active_tasks and max_concurrency among them)
-- Returns      {now_ms, stored strategy or '', balancer state or '',
--               {{classes of priority 1}, ..., {classes of priority n}},
--               {{fields of agent 1}, {fields of agent 2}, ...},
--               {{heads of class 1 of priority 1, ...}, ..., {... of priority n}},
--               the most tasks read per class,
--               1 when a class (or the view) left available agents unread, else 0,
--               {the partitions whose turn this node holds},
--               the longest wait of the requests this pass serves in ms (-1: none)}
--              where the heads of a class are {{task_id, seq, requirements, strategy,
--              routing_key, avoid_agent_id}, ...} as in lua/queue_heads.lua (none without
--              agents)
local turn_action = ARGV[1]
local limit = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local spread = tonumber(ARGV[6]) or 0
local home = ARGV[7]
local held_count = tonumber(ARGV[8])
local priority_count = tonumber(ARGV[held_count + 9])
local first_priority = held_count + 10
local last_priority = first_priority + priority_count - 1
local for_view = turn_action == 'view'
local taking_turns = turn_action == 'begin' or turn_action == 'again'
local fields = {}
local at = {}
for i = last_priority + 1, #ARGV do
  fields[#fields + 1] = ARGV[i]
  at[ARGV[i]] = #fields
end

-- The classes with tasks waiting, per priority; with the turns, only those of the
-- partitions this node holds.
local classes = {}
local partitions = {}
for i = first_priority, last_priority do
  classes[#classes + 1] = redis.call('SMEMBERS', K.classes .. ARGV[i])
  if taking_turns then
    for _, class in ipairs(classes[#classes]) do
      local partition = class_partition(class)
      if not partitions[partition] then
        partitions[partition] = true
        partitions[#partitions + 1] = partition
      end
    end
  end
end
local held = {}
local waited = -1
local passing_elsewhere = {}  -- nodes passing now: their agents' free slots are theirs
if taking_turns then
  local now = now_ms()
  held, waited, passing_elsewhere = take_turns(partitions, ARGV[2], ARGV[3], now, home)
  passing_elsewhere[home] = nil
  local holding = {}
  for _, partition in ipairs(held) do
    holding[partition] = true
  end
  local idle = {}
  for i = 9, held_count + 8 do
    if not holding[ARGV[i]] then
      idle[#idle + 1] = ARGV[i]  -- nothing waits there any more, or it is left to its node
    end
  end
  release_turns(idle, ARGV[2])
  if #held == 0 then
    return false  -- nothing waiting, or other nodes' turns: they pass again (their flags)
  end
  for i, of_priority in ipairs(classes) do
    local mine = {}
    for _, class in ipairs(of_priority) do
      if holding[class_partition(class)] then
        mine[#mine + 1] = class
      end
    end
    classes[i] = mine
  end
end

local waiting_in = {}  -- class -> {tasks waiting in all priorities, a priority it waits at}
local class_order = {}
for i = first_priority, last_priority do
  for _, class in ipairs(classes[i - first_priority + 1]) do
    local count = redis.call('ZCARD', K.queue .. ARGV[i] .. ':' .. class)
    if waiting_in[class] then
      waiting_in[class][1] = waiting_in[class][1] + count
    else
      waiting_in[class] = {count, ARGV[i]}
      class_order[#class_order + 1] = class
    end
  end
end

local picked = {}
local picked_ids = {}
local more_agents = 0
local node_alive = {}

-- Whether the agent's stream is open on a live node (the rest of being available, its
-- membership of the available sets says); with ``to_this_pass``, not on another node that
-- is passing now (taking the turns): that node fills its own agents' free slots, and two
-- nodes choosing the same slot at once would only see one of them refused.
local function streaming(agent_id, to_this_pass)
  local connection = redis.call('HGET', K.connected, agent_id)
  if not connection then
    return false
  end
  local node_id = string.match(connection, '^(%S+)')
  if to_this_pass and passing_elsewhere[node_id] then
    return false
  end
  if node_alive[node_id] == nil then
    node_alive[node_id] = redis.call('EXISTS', K.node .. node_id) == 1
  end
  return node_alive[node_id]
end

local function in_all(agent_id, filters)
  for _, key in ipairs(filters) do
    if redis.call('SISMEMBER', key, agent_id) == 0 then
      return false
    end
  end
  return true
end

-- Reads the least loaded agents of the sorted set ``source`` that are in every set of
-- ``filters`` and streaming, until ``want`` of them are picked (the ones picked already
-- count) or the set ends; only those with a free slot (score below 1) unless
-- ``with_full``. Agents tied at the lowest load beyond ``want`` are read from a place
-- in their band that ARGV[6] chooses (then from its start), so that nodes and passes
-- spread their choices over them instead of all taking the first by agent_id. With
-- ``to_this_pass``, agents of other nodes passing now are left to them (``streaming``).
-- By rank: O(log n + agents read). Returns how many it found.
local function pick_least_loaded(source, filters, want, with_full, to_this_pass)
  local total = with_full and redis.call('ZCARD', source)
    or redis.call('ZCOUNT', source, '-inf', '(1')
  if total == 0 then
    return 0
  end
  local start = 0
  if total > want and spread > 0 then
    local lowest = redis.call('ZRANGE', source, 0, 0, 'WITHSCORES')[2]
    local band = redis.call('ZCOUNT', source, lowest, lowest)
    if band > want then
      start = math.floor(spread * (band - want + 1))
    end
  end
  local found = 0
  local page = math.max(want, 16)
  local function read(from, to)
    for at = from, to, page do
      for _, agent_id in ipairs(redis.call('ZRANGE', source, at, math.min(at + page - 1, to))) do
        if found >= want then
          more_agents = 1
          return true
        end
        if picked[agent_id] then
          found = found + 1
        elseif in_all(agent_id, filters) and streaming(agent_id, to_this_pass) then
          picked[agent_id] = true
          picked_ids[#picked_ids + 1] = agent_id
          found = found + 1
        end
      end
    end
    return false
  end
  if not read(start, total - 1) and start > 0 then
    read(0, start - 1)
  end
  return found
end

-- Picks the agents a class's tasks may go to (its first task's requirements stand for the
-- class's: tasks of a class have the same).
local function pick_for_class(class, count, priority)
  local first = redis.call('ZRANGE', K.queue .. priority .. ':' .. class, 0, 0)
  local requirements = first[1] and redis.call('HGET', K.task .. first[1], 'requirements')
  if not requirements or requirements == '' then
    return
  end
  local sets, agent_id = requirement_index_sets(requirements)
  if agent_id ~= '' then
    local score = redis.call('ZSCORE', K.available, agent_id)
    if score and tonumber(score) < 1 and in_all(agent_id, sets)
        and streaming(agent_id) and not picked[agent_id] then
      picked[agent_id] = true
      picked_ids[#picked_ids + 1] = agent_id
    end
    return
  end
  local source = K.available
  local smallest = -1
  for _, key in ipairs(sets) do
    local size = redis.call('ZCOUNT', K.available_in .. key, '-inf', '(1')
    if smallest < 0 or size < smallest then
      source, smallest = K.available_in .. key, size
    end
  end
  if smallest == 0 then
    return  -- no available agent has one of the attributes
  end
  local filters = {}
  for _, key in ipairs(sets) do
    if K.available_in .. key ~= source then
      filters[#filters + 1] = key
    end
  end
  local want = math.min(count, limit) + margin
  if pick_least_loaded(source, filters, want, false, true) == 0 and next(passing_elsewhere) then
    -- Only other nodes passing now have agents for it: it takes them all the same, or a
    -- node whose clients' tasks only those agents fit would wait as long as they pass.
    pick_least_loaded(source, filters, want, false, false)
  end
end

if for_view or #class_order > 0 then
  -- A pass's snapshot becomes the node's view too: the least loaded of all, whatever the
  -- classes waiting now. A view's own read takes full ones too when fewer are free (the
  -- node counts the slots its reports free in them); a pass's does not, or every pass
  -- beside thousands of full agents would read hundreds of them.
  pick_least_loaded(K.available, {}, margin, for_view, true)
end
for _, class in ipairs(class_order) do
  pick_for_class(class, waiting_in[class][1], waiting_in[class][2])
end

local agents = {}
local free_slots = 0
for _, agent_id in ipairs(picked_ids) do
  local record = redis.call('HMGET', K.agent .. agent_id, unpack(fields))
  agents[#agents + 1] = record
  if record[at.status] == 'ACTIVE' then
    free_slots = free_slots + math.max(0,
      tonumber(record[at.max_concurrency] or 0) - tonumber(record[at.active_tasks] or 0))
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
  more_agents,
  held,
  waited,
}
