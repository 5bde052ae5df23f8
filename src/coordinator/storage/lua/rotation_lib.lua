-- Choosing the agent inside Redis, over every free eligible agent of a class rather than
-- the few a dispatch snapshot read: round robin's rotation and the consistent hash ring.
-- coordinator.storage.scripts sends what assign_task.lua uses of it, before task_lib.lua:
-- the caller gives ``accept(agent_id)``, which says whether the agent can take
-- the task now (free slot, eligible, live, streaming).
--
-- Round robin walks K.rotation (or K.rotation_in .. index_key, the smallest of the class's
-- index sets': the available agents with a free slot by agent_id, availability_lib.lua)
-- from just after the class's last agent (K.rotation_positions), wrapping once; every
-- eligible agent is in each, so the first acceptable one is the same whichever is walked.
-- Consistent hash walks K.ring (every registered agent's points) clockwise from the
-- routing key's hash, wrapping once, past the points of agents that are full, not
-- eligible or not available. A walk reads pages of ROTATION_PAGE (O(log n + page) each)
-- and stops after WALK_BOUND entries: then the caller falls back to choosing among the
-- snapshot's agents (on the ring, a class that fewer than about one registered agent in
-- 100 fits and is free; the node's own ring over those agents, all in its snapshot when
-- they are at most 16, places a key as this one would).

local WALK_BOUND = 512
local ROTATION_PAGE = 64

-- The rotation to walk for a class of index sets ``sets``: ``whole`` without any, else
-- the smallest of ``prefix .. set``.
local function smallest_structure(whole, prefix, sets)
  local best, size = whole, -1
  for _, key in ipairs(sets) do
    local n = redis.call('ZCARD', prefix .. key)
    if size < 0 or n < size then
      best, size = prefix .. key, n
    end
  end
  return best
end

-- Walks the ranges in order, ``read(range, offset, count)`` giving each page, ``agent_of``
-- the agent of an entry, and returns the first agent ``accept`` takes other than ``avoid``
-- (``avoid`` itself when it is the only one and the walk saw every entry), and whether the
-- walk stopped at WALK_BOUND (then nil means "not found near", not "none").
local function walk(ranges, read, agent_of, accept, avoid)
  local verdicts = {}
  local walked = 0
  local avoid_ok = false
  for _, range in ipairs(ranges) do
    local offset = 0
    while true do
      local entries = read(range, offset, ROTATION_PAGE)
      for _, entry in ipairs(entries) do
        if walked >= WALK_BOUND then
          return nil, true
        end
        walked = walked + 1
        local agent_id = agent_of(entry)
        if verdicts[agent_id] == nil then
          verdicts[agent_id] = accept(agent_id)
          if verdicts[agent_id] then
            if agent_id ~= avoid then
              return agent_id, false
            end
            avoid_ok = true
          end
        end
      end
      if #entries < ROTATION_PAGE then
        break
      end
      offset = offset + ROTATION_PAGE
    end
  end
  return avoid_ok and avoid or nil, false
end

local function entry_is_agent(entry)
  return entry
end

local function agent_of_point(point)
  return string.match(point, '^(.*)#%d+$')
end

-- Round robin: the next agent after the class's last one, in agent_id order.
local function rotation_next(class, sets, accept, avoid)
  local rotation = smallest_structure(K.rotation, K.rotation_in, sets)
  local last = redis.call('HGET', K.rotation_positions, class)
  local ranges = {{'-', '+'}}
  if last then
    ranges = {{'(' .. last, '+'}, {'-', '[' .. last}}
  end
  local function read(range, offset, count)
    return redis.call('ZRANGEBYLEX', rotation, range[1], range[2], 'LIMIT', offset, count)
  end
  return walk(ranges, read, entry_is_agent, accept, avoid)
end

-- Records round robin's choice for the class: the next task of it starts after this agent.
local function rotation_moved(class, agent_id)
  redis.call('HSET', K.rotation_positions, class, agent_id)
end

-- Consistent hash: the agent of the first point clockwise from the key's hash (a point
-- scored exactly the key's hash belongs to the next: as bisect_right in balancing.py).
local function ring_next(routing_key, accept, avoid)
  local ring = K.ring
  local at = string.format('%.0f', ring_hash(routing_key))
  local function read(range, offset, count)
    return redis.call('ZRANGEBYSCORE', ring, range[1], range[2], 'LIMIT', offset, count)
  end
  return walk({{'(' .. at, '+inf'}, {'-inf', at}}, read, agent_of_point, accept, avoid)
end
