-- Assigns a queued task to an agent, or refuses without changing anything. Everything moves
-- together: the task leaves its queues and gets its agent, attempt, fencing token and lease;
-- the agent's active count rises; the node holding the agent's stream is told. The checks
-- are repeated here because the dispatcher chose from a snapshot: another node may have
-- taken the task or the slot meanwhile. (A task assigned at its submit never queues:
-- submit_task.lua assigns it.)
--
-- ARGV[1]      task_id
-- ARGV[2]      agent_id
-- ARGV[3]      random part of the fencing token
-- ARGV[4]      liveness timeout in milliseconds
-- ARGV[5]      node_id of the assigning node (recorded in the attempt)
-- ARGV[6]      '1' when the assigning node sends assignments to the streams it holds
--              itself (the dispatcher): then an agent streaming from that node is not
--              told over pub/sub, and the message comes back in the reply instead
-- ARGV[7]      '' to assign to ARGV[2]; 'round_robin' or 'consistent_hash' (ARGV[2] '')
--              to choose the agent here, over every free eligible agent of the task's
--              class (rotation_lib.lua): the next after the class's last one, or the
--              first clockwise from the task's routing_key on the ring; the task's
--              avoid_agent_id only when no other can take it. The task must pin no agent
--              and want no min_health_score (the caller checks them).
-- Returns      {'ok', attempt, latency_ms} for a first attempt (latency_ms: from the submit
--              to this assignment), {'ok', attempt} for a retry, or {refusal, detail};
--              refusals about the task are 'task_gone', about the agent 'agent_gone',
--              'agent_unavailable', 'agent_full'. With a message for the assigning node
--              itself: {'ok', attempt, latency_ms or -1, message}. Choosing here, an
--              assignment's reply is {'ok', attempt, latency_ms or -1, message or nil,
--              agent_id}; the refusals add 'no_free_agent' (none of the class can take
--              it) and 'walk_bound' (none within rotation_lib.lua's WALK_BOUND entries:
--              counted in tasks:stats 'walk_bound_fallbacks'; the caller then chooses
--              among the agents it read).
local task_id = ARGV[1]
local agent_id = ARGV[2]
local token_nonce = ARGV[3]
local liveness_timeout_ms = tonumber(ARGV[4])
local node_id = ARGV[5]
local deliver_here = ARGV[6] == '1'
local choose_by = ARGV[7] or ''

local task = load_task(task_id, TASK_FIELDS)
if not task or task.state ~= 'PENDING'
    or not redis.call('ZSCORE', K.queue .. task.priority, task_id) then
  return {'task_gone', task and task.state or 'missing'}
end

local now = now_ms()
if choose_by == '' then
  local refusal, accepted = agent_refusal(agent_id, now, liveness_timeout_ms)
  if refusal then
    return refusal
  end
  dequeue(task)
  return assign(task, agent_id, token_nonce, node_id, accepted, deliver_here, now)
end

local details = redis.call('HMGET', K.task .. task_id, 'requirements', 'routing_key',
  'avoid_agent_id')
local sets = requirement_index_sets(details[1] or '{}')
local class = string.match(task.class, '^([^@]*)')  -- shared by every partition
local accepted_of = {}
-- Whether the agent can take the task now: available with a free slot
-- (availability_lib.lua), in every index set of the class, and as any assignment checks.
local function accept(candidate)
  local use = redis.call('ZSCORE', K.available, candidate)
  if not use or tonumber(use) >= 1 then
    return false
  end
  for _, key in ipairs(sets) do
    if redis.call('SISMEMBER', key, candidate) == 0 then
      return false
    end
  end
  local refusal, accepted = agent_refusal(candidate, now, liveness_timeout_ms)
  accepted_of[candidate] = accepted
  return refusal == nil
end
if redis.call('ZCOUNT', K.available, '-inf', '(1') == 0 then
  return {'no_free_agent', 'none available'}
end
local over_bound
if choose_by == 'round_robin' then
  agent_id, over_bound = rotation_next(class, sets, accept, details[3] or '')
else
  agent_id, over_bound = ring_next(details[2] or '', accept, details[3] or '')
end
if over_bound then
  redis.call('HINCRBY', K.stats, 'walk_bound_fallbacks', 1)
  return {'walk_bound', WALK_BOUND}
end
if not agent_id then
  return {'no_free_agent', 'none of the class'}
end
if choose_by == 'round_robin' then
  rotation_moved(class, agent_id)
end
dequeue(task)
local reply = assign(task, agent_id, token_nonce, node_id, accepted_of[agent_id],
  deliver_here, now)
return {reply[1], reply[2], reply[3] or -1, reply[4] or false, agent_id}
