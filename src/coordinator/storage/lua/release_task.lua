-- The coordinator gives up the current attempt of a task: its lease expired, or its agent
-- lost its stream or its heartbeat. The slot is given back, the agent is told to stop, and
-- the task goes back in line after a backoff, or is FAILED once max_attempts is reached.
-- Back in line, its retry prefers another agent (retry_or_fail records this one).
--
-- ARGV[1]      task_id
-- ARGV[2]      the agent expected to hold the attempt ('' for any)
-- ARGV[3]      'lease' to release only if the lease has really ended, else ''
-- ARGV[4]      error type, for example lease_expired or agent_lost
-- ARGV[5]      reason, human-readable
-- Returns      the task's new state, or '' when there was nothing to release
local task_id = ARGV[1]
local expected_agent = ARGV[2]
local only_if_lease_ended = ARGV[3] == 'lease'
local error_type = ARGV[4]
local reason = ARGV[5]

local task = load_task(task_id, TASK_FIELDS)
if not task or not HELD[task.state] then
  redis.call('ZREM', K.leases, task_id)  -- a stale entry: nothing holds the task
  return ''
end
if expected_agent ~= '' and task.agent_id ~= expected_agent then
  return ''
end
local now = now_ms()
if only_if_lease_ended and tonumber(task.lease_expires_at_ms) > now then
  return ''  -- extended since the caller looked
end

local err = {message = reason, type = error_type, retryable = true}
local outcome = 'FAILED'
if tonumber(task.attempt) < tonumber(task.max_attempts) then
  outcome = 'PENDING'
end
end_attempt(task, now, outcome, err, nil)
release_slot(task)
record_outcome(task.agent_id, false, nil)
notify_agent(task.agent_id,
  {kind = 'cancel', task_id = task_id, attempt = tonumber(task.attempt), reason = reason})
return retry_or_fail(task, now, err, reason)
