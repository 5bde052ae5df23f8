-- Takes agents whose last heartbeat is older than the liveness timeout out of agents:active.
-- Their stored status stays (an ACTIVE agent that heartbeats again rejoins the set); their
-- effective status is INACTIVE on every node because it is computed from the heartbeat.
--
-- KEYS[1]      liveness sorted set       agents:heartbeats
-- KEYS[2]      active set                agents:active
-- ARGV[1]      liveness timeout in milliseconds
-- Returns      the ids taken out of agents:active
local heartbeats = KEYS[1]
local active_agents = KEYS[2]
local liveness_timeout_ms = tonumber(ARGV[1])

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local stale = redis.call('ZRANGEBYSCORE', heartbeats, '-inf', '(' .. (now_ms - liveness_timeout_ms))
local removed = {}
for _, agent_id in ipairs(stale) do
  if redis.call('SREM', active_agents, agent_id) == 1 then
    available_refresh(agent_id)
    removed[#removed + 1] = agent_id
  end
end
return removed
