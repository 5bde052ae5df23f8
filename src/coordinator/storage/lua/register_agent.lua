-- Registers an agent, or updates its record, keeping every index exact.
-- Re-registration keeps registered_at_ms, active_tasks and node_id, and an operator-set
-- MAINTENANCE or ERROR status; any other status becomes ACTIVE. Index entries the new
-- registration no longer has (capabilities, services, labels, type) are removed.
-- Time is Redis's clock, so every node shares one clock.
--
-- KEYS[1]      agent hash                agent:{agent_id}
-- KEYS[2]      set of all agents         agents:all
-- KEYS[3]      liveness sorted set       agents:heartbeats
-- KEYS[4..7]   status index sets         ACTIVE (agents:active), BUSY, MAINTENANCE, ERROR
-- KEYS[8..]    descriptive index sets the agent belongs to from now on
-- ARGV[1]      agent_id
-- ARGV[2..]    field, value pairs of the descriptive fields
-- Returns      {created (0 or 1), now_ms, HGETALL of the record}
local agent_key = KEYS[1]
local all_agents = KEYS[2]
local heartbeats = KEYS[3]
local status_sets = {ACTIVE = KEYS[4], BUSY = KEYS[5], MAINTENANCE = KEYS[6], ERROR = KEYS[7]}
local first_index_key = 8
local agent_id = ARGV[1]
local first_field_arg = 2

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local old = redis.call('HMGET', agent_key, 'registered_at_ms', 'status', 'index_keys')
local created = old[1] == false
local registered_at_ms = old[1] or now_ms
local status = old[2]
if status ~= 'MAINTENANCE' and status ~= 'ERROR' then
  status = 'ACTIVE'
end

local new_index_keys = {}
local keep = {}
for i = first_index_key, #KEYS do
  new_index_keys[#new_index_keys + 1] = KEYS[i]
  keep[KEYS[i]] = true
end
if old[3] then
  available_clear(agent_id, old[3])  -- refreshed below, under the new index keys
  for _, key in ipairs(cjson.decode(old[3])) do
    if not keep[key] then
      redis.call('SREM', key, agent_id)
    end
  end
end
ring_put(agent_id)  -- on the consistent hash ring from its first registration on
for _, key in ipairs(new_index_keys) do
  redis.call('SADD', key, agent_id)
end
for name, key in pairs(status_sets) do
  if name ~= status then
    redis.call('SREM', key, agent_id)
  end
end
redis.call('SADD', status_sets[status], agent_id)
redis.call('SADD', all_agents, agent_id)
redis.call('ZADD', heartbeats, now_ms, agent_id)

local index_keys_json = '[]'
if #new_index_keys > 0 then
  index_keys_json = cjson.encode(new_index_keys)
end
local hset = {
  'HSET', agent_key,
  'agent_id', agent_id,
  'registered_at_ms', registered_at_ms,
  'last_heartbeat_at_ms', now_ms,
  'status', status,
  'index_keys', index_keys_json,
}
for i = first_field_arg, #ARGV do
  hset[#hset + 1] = ARGV[i]
end
redis.call(unpack(hset))
if created then
  redis.call('HSET', agent_key, 'active_tasks', 0, 'node_id', '', 'status_reason', '',
    'load_metrics', '{}')
end
available_refresh(agent_id)
return {created and 1 or 0, now_ms, redis.call('HGETALL', agent_key)}
