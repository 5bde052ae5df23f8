-- Records a heartbeat: refreshes liveness, optionally replaces load metrics and sets the
-- status the agent reports. An operator-set MAINTENANCE or ERROR is never overwritten.
-- An ACTIVE agent that had gone stale is put back into agents:active.
--
-- KEYS[1]      agent hash                agent:{agent_id}
-- KEYS[2]      liveness sorted set       agents:heartbeats
-- KEYS[3..6]   status index sets         ACTIVE (agents:active), BUSY, MAINTENANCE, ERROR
-- KEYS[7]      open streams hash         agents:connected
-- ARGV[1]      agent_id
-- ARGV[2]      reported status (ACTIVE or BUSY), or '' to keep the stored one
-- ARGV[3]      load metrics as a JSON object, or '' to keep the stored ones
-- ARGV[4]      prefix of the node presence keys (coordinator:nodes:)
-- Returns      {} when the agent is unknown, else {now_ms, HGETALL of the record, streaming}
--              where streaming is 1 when the agent's stream is open on a live node
local agent_key = KEYS[1]
local heartbeats = KEYS[2]
local status_sets = {ACTIVE = KEYS[3], BUSY = KEYS[4], MAINTENANCE = KEYS[5], ERROR = KEYS[6]}
local connected = KEYS[7]
local agent_id = ARGV[1]
local reported_status = ARGV[2]
local load_metrics_json = ARGV[3]
local node_prefix = ARGV[4]

local stored_status = redis.call('HGET', agent_key, 'status')
if not stored_status then
  return {}
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local status = stored_status
if reported_status ~= '' and stored_status ~= 'MAINTENANCE' and stored_status ~= 'ERROR' then
  status = reported_status
end
if status ~= stored_status then
  redis.call('SREM', status_sets[stored_status], agent_id)
end
redis.call('SADD', status_sets[status], agent_id)
redis.call('ZADD', heartbeats, now_ms, agent_id)
redis.call('HSET', agent_key, 'last_heartbeat_at_ms', now_ms, 'status', status)
if load_metrics_json ~= '' then
  redis.call('HSET', agent_key, 'load_metrics', load_metrics_json)
end
available_check(agent_id)
local streaming = 0
local connection = redis.call('HGET', connected, agent_id)
if connection then
  streaming = redis.call('EXISTS', node_prefix .. string.match(connection, '^(%S+)'))
end
return {now_ms, redis.call('HGETALL', agent_key), streaming}
