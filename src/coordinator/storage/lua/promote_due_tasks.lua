-- Puts tasks whose retry backoff has passed back in line, keeping their original place
-- (older work first).
--
-- ARGV[1]      most tasks to move in one call
-- Returns      the number of tasks moved
local limit = tonumber(ARGV[1])

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K.scheduled, '-inf', now, 'LIMIT', 0, limit)
local moved = 0
for _, task_id in ipairs(due) do
  redis.call('ZREM', K.scheduled, task_id)
  local task = load_task(task_id, TASK_FIELDS)
  if task and task.state == 'PENDING' then
    enqueue(task, now)
    moved = moved + 1
  end
end
return moved
