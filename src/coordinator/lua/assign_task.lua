-- Assigns a queued task to an agent, or refuses without changing anything. Everything moves
-- together: the task leaves its queues and gets its agent, attempt, fencing token and lease;
-- the agent's active count rises; the node holding the agent's stream is told. The checks
-- are repeated here because the dispatcher chose from a snapshot: another node may have
-- taken the task or the slot meanwhile.
--
-- ARGV[1]      task_id
-- ARGV[2]      agent_id
-- ARGV[3]      random part of the fencing token
-- ARGV[4]      liveness timeout in milliseconds
-- ARGV[5]      node_id of the assigning node (recorded in the attempt)
-- ARGV[6]      '1' when the assigning node sends assignments to the streams it holds
--              itself (the dispatcher): then an agent streaming from that node is not
--              told over pub/sub, and the message comes back in the reply instead
-- ARGV[7]      '1' for an assignment at submit, chosen without a pass: refused unless the
--              task is first in line (task_lib's first_in_line)
-- Returns      {'ok', attempt, latency_ms} for a first attempt (latency_ms: from the submit
--              to this assignment), {'ok', attempt} for a retry, or {refusal, detail};
--              refusals about the task are 'task_gone' and 'not_first', about the agent
--              'agent_gone', 'agent_unavailable', 'agent_full'. With a message for the
--              assigning node itself: {'ok', attempt, latency_ms or -1, message}.
local task_id = ARGV[1]
local agent_id = ARGV[2]
local token_nonce = ARGV[3]
local liveness_timeout_ms = tonumber(ARGV[4])
local node_id = ARGV[5]
local deliver_here = ARGV[6] == '1'
local at_submit = ARGV[7] == '1'

local task = load_task(task_id, TASK_FIELDS)
if not task or task.state ~= 'PENDING'
    or not redis.call('ZSCORE', K.queue .. task.priority, task_id) then
  return {'task_gone', task and task.state or 'missing'}
end
if at_submit and not first_in_line(task) then
  return {'not_first', 'a task waits ahead of it'}
end

local agent_key = K.agent .. agent_id
local agent = redis.call('HMGET', agent_key, 'status', 'max_concurrency', 'active_tasks')
if not agent[1] then
  return {'agent_gone', 'not registered'}
end
if agent[1] ~= 'ACTIVE' then
  return {'agent_unavailable', agent[1]}
end
local now = now_ms()
local last_heartbeat = tonumber(redis.call('ZSCORE', K.heartbeats, agent_id) or 0)
if last_heartbeat < now - liveness_timeout_ms then
  return {'agent_unavailable', 'heartbeat expired'}
end
local connection = redis.call('HGET', K.connected, agent_id)
if not connection then
  return {'agent_unavailable', 'no open stream'}
end
local stream_node = string.match(connection, '^(%S+)')
if redis.call('EXISTS', K.node .. stream_node) == 0 then
  return {'agent_unavailable', 'its node ' .. stream_node .. ' is gone'}
end
if tonumber(agent[3] or 0) >= tonumber(agent[2]) then
  return {'agent_full', agent[3]}
end

dequeue(task)
local previous_agent = task.agent_id
local attempt = tonumber(task.attempt) + 1
local token = attempt .. ':' .. token_nonce
local lease_ms = now + tonumber(task.start_to_close_ms)
local attempts = append_to_list(task.attempts, {
  attempt = attempt, agent_id = agent_id, node_id = node_id, assigned_at_ms = now,
  token = token,
})
task.attempt = attempt
task.agent_id = agent_id
redis.call('HSET', K.task .. task_id,
  'attempt', attempt, 'agent_id', agent_id, 'fencing_token', token,
  'lease_expires_at_ms', lease_ms, 'assigned_at_ms', now, 'attempts', attempts)
transition(task, 'ASSIGNED', now, 'assigned by node ' .. node_id)

redis.call('ZADD', K.leases, lease_ms, task_id)
redis.call('SADD', K.agent_tasks .. agent_id, task_id)
redis.call('SADD', K.holding, agent_id)
redis.call('HINCRBY', agent_key, 'active_tasks', 1)
if previous_agent ~= '' and previous_agent ~= agent_id then
  redis.call('ZREM', K.by_agent .. previous_agent, task_id)
end
redis.call('ZADD', K.by_agent .. agent_id, tonumber(task.seq), task_id)

redis.call('HINCRBY', K.stats, 'tasks_distributed', 1)
redis.call('HINCRBY', K.assignments_per_agent, agent_id, 1)
local latency_ms = nil
if attempt == 1 then
  latency_ms = now - tonumber(task.created_at_ms)
  redis.call('HINCRBY', K.stats, 'submit_to_assignment_ms_total', latency_ms)
  redis.call('HINCRBY', K.stats, 'submit_to_assignment_count', 1)
  redis.call('LPUSH', K.assign_latencies, latency_ms)
  redis.call('LTRIM', K.assign_latencies, 0, 9999)
end
-- The whole assignment rides on the message, so the node holding the stream sends it
-- without reading it back (task_data stays a JSON string: cjson would not keep it exact).
local payload = redis.call('HMGET', K.task .. task_id, 'task_type', 'task_data')
local message = {
  kind = 'assign', task_id = task_id, attempt = attempt, fencing_token = token,
  task_type = payload[1] or '', task_data = payload[2] or '{}', priority = task.priority,
  assigned_at_ms = now, lease_expires_at_ms = lease_ms,
  start_to_close_ms = tonumber(task.start_to_close_ms),
}
if deliver_here and stream_node == node_id then
  message.agent_id = agent_id
  return {'ok', attempt, latency_ms or -1, cjson.encode(message)}
end
notify_agent(agent_id, message)
if latency_ms then
  return {'ok', attempt, latency_ms}
end
return {'ok', attempt}
