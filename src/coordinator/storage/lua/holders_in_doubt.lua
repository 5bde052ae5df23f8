-- The agents holding tasks (agents:holding) that the reaper must look at, with what it
-- decides from: all but those plainly well (registered, heartbeat fresh, stream open on a
-- live node, not in agents:disconnected), which are nearly all of them. The checks run
-- here, in one call, so that a round costs the node O(agents in doubt), not a reply per
-- holding agent (tens of thousands of replies a round with 10,000 agents holding tasks);
-- and a round looks at one SSCAN step of the set (about ARGV[3] agents; all of a small
-- set), the next round at the next, so Redis does O(ARGV[3]) per round too: with more
-- holding agents than that, each is looked at every few rounds.
--
-- ARGV[1]      the oldest fresh heartbeat, epoch milliseconds (now - liveness timeout)
-- ARGV[2]      the SSCAN cursor: '0' to start, then what the last call returned
-- ARGV[3]      about how many holding agents to look at
-- Returns      {next cursor ('0': the set was gone through), {{agent_id, exists (0 or
--               1), last heartbeat ms or false, connection ('{node_id} {session_id}') or
--               false, closed at ms or false, its node alive (0 or 1)}, ...}}, in
--               agent_id order
local fresh_after = tonumber(ARGV[1])
local step = redis.call('SSCAN', K.holding, ARGV[2], 'COUNT', tonumber(ARGV[3]))
local holders = step[2]
table.sort(holders)
local node_alive = {}
local in_doubt = {}
for _, agent_id in ipairs(holders) do
  local exists = redis.call('EXISTS', K.agent .. agent_id)
  local heartbeat = redis.call('ZSCORE', K.heartbeats, agent_id)
  local connection = redis.call('HGET', K.connected, agent_id)
  local closed_at = redis.call('ZSCORE', K.disconnected, agent_id)
  local alive = 0
  if connection then
    local node_id = string.match(connection, '^(%S+)')
    if node_alive[node_id] == nil then
      node_alive[node_id] = redis.call('EXISTS', K.node .. node_id)
    end
    alive = node_alive[node_id]
  end
  local well = exists == 1 and heartbeat and tonumber(heartbeat) >= fresh_after
    and alive == 1 and not closed_at
  if not well then
    in_doubt[#in_doubt + 1] = {agent_id, exists, heartbeat, connection, closed_at, alive}
  end
end
return {step[1], in_doubt}
