-- Cancels a task. A PENDING task leaves its queue; an ASSIGNED or RUNNING task gives back
-- its slot and its agent is sent a cancel notice (its later report is refused).
--
-- ARGV[1]      task_id
-- ARGV[2]      reason
-- ARGV[3]      'pending_only' to cancel only a PENDING task (queue purges), else ''
-- ARGV[4]      the principal the task must have been submitted by (a client cancelling
--              its own task), or '' for any task (no authentication, or an operator)
-- Returns      {'ok'}, {'not_found'}, {'not_owner'} (another principal's task: checked
--              before its state, so the reply says nothing more about it) or
--              {'final', state} (or {'not_pending', state})
local task_id = ARGV[1]
local reason = ARGV[2]
local pending_only = ARGV[3] == 'pending_only'
local required_submitter = ARGV[4] or ''

local task = load_task(task_id, TASK_FIELDS)
if not task then
  return {'not_found'}
end
if required_submitter ~= '' and
    task_field(task_id, 'submitted_by') ~= required_submitter then
  return {'not_owner'}
end
if FINAL[task.state] then
  return {'final', task.state}
end
if pending_only and task.state ~= 'PENDING' then
  return {'not_pending', task.state}
end
local now = now_ms()
if task.state == 'PENDING' then
  dequeue(task)
else
  end_attempt(task, now, 'CANCELLED', nil, nil)
  release_slot(task)
  notify_agent(task.agent_id,
    {kind = 'cancel', task_id = task_id, attempt = tonumber(task.attempt), reason = reason})
end
redis.call('HINCRBY', K.stats, 'tasks_cancelled', 1)
transition(task, 'CANCELLED', now, reason)
return {'ok'}
