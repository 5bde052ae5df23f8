-- Reads the records of the candidates of a discovery in one atomic step, using only the
-- indexes: for each requested stored status, the intersection of its index set with the
-- filter sets; for INACTIVE, the stale end of the liveness sorted set, kept if it is in
-- every filter set. The caller checks each record against the full query.
--
-- KEYS[1]      liveness sorted set       agents:heartbeats
-- KEYS[2..n+1] index sets of the requested stored statuses (n = ARGV[1])
-- KEYS[n+2..]  filter index sets (type, capabilities, services, labels)
-- ARGV[1]      n, the number of status index sets
-- ARGV[2]      1 to include INACTIVE agents, else 0
-- ARGV[3]      liveness timeout in milliseconds
-- ARGV[4]      prefix of agent hash keys (agent:), from coordinator.keys
-- ARGV[5..]    the record fields to read
-- Returns      {now_ms, {for each candidate, its fields' values as one JSON array}}
--              (a missing field is false). One string per record, not one per field: the
--              node parses a few dozen strings instead of a thousand, and the string is the
--              key under which it keeps the decoded agent.
local heartbeats = KEYS[1]
local status_key_count = tonumber(ARGV[1])
local include_inactive = ARGV[2] == '1'
local liveness_timeout_ms = tonumber(ARGV[3])
local agent_key_prefix = ARGV[4]
local first_field_arg = 5
local first_filter_key = status_key_count + 2

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local filter_keys = {}
for i = first_filter_key, #KEYS do
  filter_keys[#filter_keys + 1] = KEYS[i]
end

local seen = {}
local candidates = {}
local function add(agent_id)
  if not seen[agent_id] then
    seen[agent_id] = true
    candidates[#candidates + 1] = agent_id
  end
end

for i = 2, status_key_count + 1 do
  for _, agent_id in ipairs(redis.call('SINTER', KEYS[i], unpack(filter_keys))) do
    add(agent_id)
  end
end

if include_inactive then
  local stale = redis.call('ZRANGEBYSCORE', heartbeats, '-inf', '(' .. (now_ms - liveness_timeout_ms))
  for _, agent_id in ipairs(stale) do
    local in_all = true
    for _, key in ipairs(filter_keys) do
      if redis.call('SISMEMBER', key, agent_id) == 0 then
        in_all = false
        break
      end
    end
    if in_all then
      add(agent_id)
    end
  end
end

local fields = {}
for i = first_field_arg, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local records = {}
for _, agent_id in ipairs(candidates) do
  records[#records + 1] = cjson.encode(redis.call('HMGET', agent_key_prefix .. agent_id, unpack(fields)))
end
return {now_ms, records}
