-- Expires PENDING tasks that no agent took within their schedule-to-start timeout.
--
-- ARGV[1]      most tasks to expire in one call
-- Returns      the ids of the expired tasks
local limit = tonumber(ARGV[1])

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K.start_deadlines, '-inf', now, 'LIMIT', 0, limit)
local expired = {}
for _, task_id in ipairs(due) do
  local task = load_task(task_id, TASK_FIELDS)
  if task and task.state == 'PENDING' then
    dequeue(task)
    redis.call('HINCRBY', K.stats, 'tasks_expired', 1)
    transition(task, 'EXPIRED', now, 'no agent took it within its schedule-to-start timeout')
    expired[#expired + 1] = task_id
  else
    redis.call('ZREM', K.start_deadlines, task_id)
  end
end
return expired
