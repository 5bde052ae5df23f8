-- An agent's report about the attempt it holds: acknowledge (ASSIGNED to RUNNING), extend
-- the lease, complete with a result, or fail with an error. The fencing token must be the
-- current attempt's: a report for an attempt that is no longer current changes nothing and
-- is refused. Repeating a report that succeeded changes nothing and is answered 'repeat'.
-- A retryable failure puts the task back in line, and its retry prefers another agent
-- (retry_or_fail records this one).
--
-- ARGV[1]      task_id
-- ARGV[2]      agent_id
-- ARGV[3]      fencing token
-- ARGV[4]      action: ack, extend, complete or fail
-- ARGV[5]      complete: result JSON; fail: error JSON (message, type, retryable, details);
--              extend: lease length in milliseconds, or '' for the task's start_to_close
-- ARGV[6]      '0': leave out the task record below (batch callers answer without it);
--              anything else, or absent: include it
-- Returns      {'ok' or 'repeat', state, lease_expires_at_ms} on success, and for complete
--              and fail a fourth element, the task's HGETALL (the caller answers with it),
--              and after 'ok' a fifth, 1 when tasks wait in line for the freed slot, else 0;
--              {'not_found'}, {'stale', state, attempt} or {'not_held', state} on refusal
local task_id = ARGV[1]
local agent_id = ARGV[2]
local token = ARGV[3]
local action = ARGV[4]
local payload = ARGV[5]
local with_record = ARGV[6] ~= '0'

-- The task's whole record, for the fourth element of the reply, if the caller wants it.
local function record()
  if with_record then
    return task_record(task_id)
  end
  return {}
end

local task = load_task(task_id, TASK_FIELDS)
if not task then
  return {'not_found'}
end
local attempts = decode_list(task.attempts)

-- A report that already succeeded for this attempt: answer it again, change nothing.
local function earlier_report()
  for i = #attempts, 1, -1 do
    local entry = attempts[i]
    if entry.token == token and entry.agent_id == agent_id then
      if entry.reported == action then
        return entry
      end
      return nil
    end
  end
  return nil
end

if token ~= task.fencing_token or agent_id ~= task.agent_id then
  if earlier_report() then
    return {'repeat', task.state, '', record()}
  end
  return {'stale', task.state, task.attempt}
end
if earlier_report() then
  return {'repeat', task.state, task.lease_expires_at_ms, record()}
end
if action == 'ack' and task.state == 'RUNNING' then
  return {'repeat', task.state, task.lease_expires_at_ms}
end
if not HELD[task.state] then
  return {'not_held', task.state}
end

local key = K.task .. task_id
local now = now_ms()
local current = attempts[#attempts]

if action == 'ack' or action == 'extend' then
  local lease_ms = tonumber(task.start_to_close_ms)
  if action == 'extend' and payload ~= '' then
    lease_ms = tonumber(payload)
  end
  local lease_end = now + lease_ms
  redis.call('HSET', key, 'lease_expires_at_ms', lease_end)
  redis.call('ZADD', K.leases, lease_end, task_id)
  if action == 'ack' then
    current.started_at_ms = now
    task.attempts = encode_list(attempts)
    redis.call('HSET', key, 'attempts', task.attempts)
    transition(task, 'RUNNING', now, 'acknowledged by agent')
  end
  return {'ok', task.state, lease_end}
end

if action == 'complete' then
  local started = tonumber(current.started_at_ms or current.assigned_at_ms)
  end_attempt(task, now, 'COMPLETED', nil, 'complete')
  redis.call('HSET', key, 'result', payload, 'error', '')
  release_slot(task)
  record_outcome(agent_id, true, now - started)
  redis.call('HINCRBY', K.stats, 'tasks_completed', 1)
  transition(task, 'COMPLETED', now, 'completed by agent')
  return {'ok', task.state, '', record(), tasks_waiting()}
end

-- fail
local err = cjson.decode(payload)
local retry_state = 'FAILED'
if err.retryable and tonumber(task.attempt) < tonumber(task.max_attempts) then
  retry_state = 'PENDING'
end
end_attempt(task, now, retry_state, err, 'fail')
release_slot(task)
record_outcome(agent_id, false, nil)
local reason = 'failed by agent: ' .. (err.message or '')
retry_or_fail(task, now, err, reason)
return {'ok', task.state, '', record(), tasks_waiting()}
