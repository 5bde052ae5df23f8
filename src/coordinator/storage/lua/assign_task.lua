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
-- Returns      {'ok', attempt, latency_ms} for a first attempt (latency_ms: from the submit
--              to this assignment), {'ok', attempt} for a retry, or {refusal, detail};
--              refusals about the task are 'task_gone', about the agent 'agent_gone',
--              'agent_unavailable', 'agent_full'. With a message for the assigning node
--              itself: {'ok', attempt, latency_ms or -1, message}.
local task_id = ARGV[1]
local agent_id = ARGV[2]
local token_nonce = ARGV[3]
local liveness_timeout_ms = tonumber(ARGV[4])
local node_id = ARGV[5]
local deliver_here = ARGV[6] == '1'

local task = load_task(task_id, TASK_FIELDS)
if not task or task.state ~= 'PENDING'
    or not redis.call('ZSCORE', K.queue .. task.priority, task_id) then
  return {'task_gone', task and task.state or 'missing'}
end

local now = now_ms()
local refusal, accepted = agent_refusal(agent_id, now, liveness_timeout_ms)
if refusal then
  return refusal
end
dequeue(task)
return assign(task, agent_id, token_nonce, node_id, accepted, deliver_here, now)
