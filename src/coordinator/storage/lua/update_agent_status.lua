-- Sets an agent's status, reason and load metrics (an operator's or the agent's decision).
-- agents:active only holds live agents: a stale agent set to ACTIVE joins it at its next
-- heartbeat.
--
-- KEYS[1]      agent hash                agent:{agent_id}
-- KEYS[2]      liveness sorted set       agents:heartbeats
-- KEYS[3..6]   status index sets         ACTIVE (agents:active), BUSY, MAINTENANCE, ERROR
-- ARGV[1]      agent_id
-- ARGV[2]      new status: ACTIVE, BUSY, MAINTENANCE or ERROR
-- ARGV[3]      load metrics as a JSON object (replaces the stored ones)
-- ARGV[4]      reason
-- ARGV[5]      liveness timeout in milliseconds
-- Returns      {} when the agent is unknown, else {now_ms, HGETALL of the record}
local agent_key = KEYS[1]
local heartbeats = KEYS[2]
local status_sets = {ACTIVE = KEYS[3], BUSY = KEYS[4], MAINTENANCE = KEYS[5], ERROR = KEYS[6]}
local agent_id = ARGV[1]
local status = ARGV[2]
local load_metrics_json = ARGV[3]
local reason = ARGV[4]
local liveness_timeout_ms = tonumber(ARGV[5])

if redis.call('EXISTS', agent_key) == 0 then
  return {}
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local last_heartbeat_ms = tonumber(redis.call('ZSCORE', heartbeats, agent_id) or 0)
local live = now_ms - last_heartbeat_ms <= liveness_timeout_ms

for name, key in pairs(status_sets) do
  if name ~= status then
    redis.call('SREM', key, agent_id)
  end
end
if status ~= 'ACTIVE' or live then
  redis.call('SADD', status_sets[status], agent_id)
end
redis.call('HSET', agent_key, 'status', status, 'status_reason', reason,
  'load_metrics', load_metrics_json)
available_refresh(agent_id)
return {now_ms, redis.call('HGETALL', agent_key)}
