-- Shared by every script that changes whether an agent can take a task now: its status,
-- its liveness set (agents:active), its open stream, its slots, its registration.
-- coordinator.storage.scripts sends the helpers of it a script uses before the script.
--
-- K.available is a sorted set of the agents that can be given tasks: ACTIVE, in
-- agents:active, their stream open (agents:connected); scored by slot use (active_tasks /
-- max_concurrency), so those that can take a task now (a free slot) score below 1, least
-- loaded first. (The full ones are kept too: a node's view holds them, and counts the
-- slots its reports free.) K.available_in .. index_key is the same set for the agents of
-- one descriptive index set (agents:capability:gpu, ...), so a requirements class reads
-- its least loaded eligible agents from the smallest of them. K.rotation (and
-- K.rotation_in .. index_key) holds those of them with a free slot, all scored 0: round
-- robin walks it in agent_id order (ZRANGEBYLEX, rotation_lib.lua), and a walk
-- never passes full agents (a slot taken or freed moves an agent in or out of it only when
-- it fills or frees its last slot).
-- Every script that changes one of the inputs calls available_refresh in the same call, so
-- the sets are exact between scripts. Whether the node holding the stream is alive is not
-- part of it (its presence key expires by itself, and a node starting writes it after its
-- first streams may open): dispatch_snapshot.lua skips the agents of a node gone, until
-- they stop heartbeating (sweep_stale_agents.lua) or open a stream elsewhere.

-- The agent's descriptive index keys (the JSON list register_agent.lua keeps).
local function available_index_keys(raw)
  if not raw or raw == '' or raw == '[]' then
    return {}
  end
  return cjson.decode(raw)
end

-- Takes the agent out of every available set and rotation (given its index keys, JSON).
local function available_clear(agent_id, raw_index_keys)
  redis.call('ZREM', K.available, agent_id)
  redis.call('ZREM', K.rotation, agent_id)
  for _, key in ipairs(available_index_keys(raw_index_keys)) do
    redis.call('ZREM', K.available_in .. key, agent_id)
    redis.call('ZREM', K.rotation_in .. key, agent_id)
  end
end

-- Slot use: below 1 with a free slot, at least 1 when full.
local function available_slot_use(active, max_concurrency)
  if active >= max_concurrency then
    return math.max(1, active / math.max(max_concurrency, 1))
  end
  return active / max_concurrency
end

-- The agent's slot use when it can be given tasks (nil when not); from its record fields
-- {status, max_concurrency, active_tasks}.
local function available_score(agent_id, record)
  if record[1] ~= 'ACTIVE' or redis.call('SISMEMBER', K.active, agent_id) == 0 then
    return nil
  end
  if redis.call('HEXISTS', K.connected, agent_id) == 0 then
    return nil
  end
  return available_slot_use(tonumber(record[3]) or 0, tonumber(record[2]) or 0)
end

-- Puts the agent in round robin's rotations when it has a free slot, else takes it out.
local function rotation_refresh(agent_id, free, index_keys)
  local rotations = {K.rotation}
  for _, key in ipairs(index_keys) do
    rotations[#rotations + 1] = K.rotation_in .. key
  end
  for _, rotation in ipairs(rotations) do
    if free then
      redis.call('ZADD', rotation, 0, agent_id)
    else
      redis.call('ZREM', rotation, agent_id)
    end
  end
end

-- Puts the agent in the available sets, or takes it out, as its record says now. Returns
-- whether it is available.
local function available_refresh(agent_id)
  local record = redis.call('HMGET', K.agent .. agent_id, 'status', 'max_concurrency',
    'active_tasks', 'index_keys')
  if not record[1] then
    redis.call('ZREM', K.available, agent_id)
    redis.call('ZREM', K.rotation, agent_id)
    return false
  end
  local score = available_score(agent_id, record)
  if not score then
    available_clear(agent_id, record[4])
    return false
  end
  redis.call('ZADD', K.available, score, agent_id)
  local index_keys = available_index_keys(record[4])
  for _, key in ipairs(index_keys) do
    redis.call('ZADD', K.available_in .. key, score, agent_id)
  end
  rotation_refresh(agent_id, score < 1, index_keys)
  return true
end

-- The agent's active_tasks became ``active`` (an assignment, ``taken`` true, or an
-- attempt's end): its score changes in the sets it is in, and nothing else (ZADD XX leaves
-- out an agent that is not available; its other inputs did not change); it leaves the
-- rotations when this took its last free slot, and comes back when this freed it. The
-- cheap refresh, for every task: the caller gives the record's max_concurrency and
-- index_keys, which it read already.
local function available_slots_changed(agent_id, active, max_concurrency, raw_index_keys, taken)
  local most = tonumber(max_concurrency) or 0
  local score = available_slot_use(active, most)
  if redis.call('ZADD', K.available, 'XX', 'CH', score, agent_id) == 0 then
    return  -- not available, or the same score
  end
  local index_keys = available_index_keys(raw_index_keys)
  for _, key in ipairs(index_keys) do
    redis.call('ZADD', K.available_in .. key, 'XX', score, agent_id)
  end
  if (taken and active == most) or (not taken and active == most - 1) then
    rotation_refresh(agent_id, not taken, index_keys)
  end
end

-- Refreshes only when the agent's membership disagrees with its record (a heartbeat's
-- check: cheap when nothing changed, which is nearly always).
local function available_check(agent_id)
  local record = redis.call('HMGET', K.agent .. agent_id, 'status', 'max_concurrency',
    'active_tasks')
  local in_set = redis.call('ZSCORE', K.available, agent_id)
  local score = record[1] and available_score(agent_id, record)
  if (score and not in_set) or (in_set and not score)
      or (score and tonumber(in_set) ~= score) then
    available_refresh(agent_id)
  end
end

-- The consistent hash ring K.ring (rotation_lib.lua walks it): RING_POINTS points an
-- agent, member '{agent_id}#{i}', scored by ring_hash of that member. It holds every
-- registered agent, free or not (register_agent.lua and deregister_agent.lua keep it), so a
-- key keeps its agent while that agent can take it; one ring for all (a ring per index set
-- would cost as much again per set: about 8.5 KB an agent each). coordinator.dispatch.
-- balancing hashes alike.
local RING_POINTS = 64

-- A point's place on the ring: the first 52 bits of SHA-1 (a double holds them exactly).
local function ring_hash(text)
  return tonumber(string.sub(redis.sha1hex(text), 1, 13), 16)
end

-- Puts the agent's points on the ring, unless they are on it.
local function ring_put(agent_id)
  if redis.call('ZSCORE', K.ring, agent_id .. '#0') then
    return
  end
  local points = {}
  for i = 0, RING_POINTS - 1 do
    local member = agent_id .. '#' .. i
    points[#points + 1] = string.format('%.0f', ring_hash(member))
    points[#points + 1] = member
  end
  redis.call('ZADD', K.ring, unpack(points))
end

-- Takes the agent's points off the ring.
local function ring_take(agent_id)
  local members = {}
  for i = 0, RING_POINTS - 1 do
    members[#members + 1] = agent_id .. '#' .. i
  end
  redis.call('ZREM', K.ring, unpack(members))
end

-- The descriptive index sets an agent must be in to fit requirements (JSON,
-- Requirements.to_json), and the agent_id they pin ('' for none).
local function requirement_index_sets(requirements)
  local r = cjson.decode(requirements)
  local sets = {}
  if r.agent_type and r.agent_type ~= '' then
    sets[#sets + 1] = K.type_index .. r.agent_type
  end
  for _, capability in ipairs(r.capabilities or {}) do
    sets[#sets + 1] = K.capability_index .. capability
  end
  for _, service in ipairs(r.services or {}) do
    sets[#sets + 1] = K.service_index .. service
  end
  for key, value in pairs(r.labels or {}) do
    sets[#sets + 1] = K.label_index .. key .. '=' .. value
  end
  return sets, r.agent_id or ''
end
