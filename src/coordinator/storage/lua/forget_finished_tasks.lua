-- Deletes finished tasks with every index entry: those that ended before a bound (the task
-- retention), and, when more than a number of finished tasks are kept, the oldest beyond it
-- (oldest finished first either way: both are a prefix of the finished index).
--
-- ARGV[1]      bound in epoch milliseconds
-- ARGV[2]      most tasks to delete in one call
-- ARGV[3]      most finished tasks to keep (0: no bound by count)
-- Returns      the number of tasks deleted
local bound_ms = ARGV[1]
local limit = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])

local ended_before = redis.call('ZCOUNT', K.finished, '-inf', bound_ms)
local beyond_keep = keep > 0 and redis.call('ZCARD', K.finished) - keep or 0
local count = math.min(limit, math.max(ended_before, beyond_keep))
if count <= 0 then
  return 0
end
local old = redis.call('ZRANGE', K.finished, 0, count - 1)
for _, task_id in ipairs(old) do
  local task = load_task(task_id, {'agent_id'})
  if task then
    redis.call('ZREM', K.state .. task.state, task_id)
    if task.agent_id ~= '' then
      redis.call('ZREM', K.by_agent .. task.agent_id, task_id)
    end
    redis.call('DEL', K.task .. task_id)
  end
  redis.call('ZREM', K.all, task_id)
  redis.call('ZREM', K.dead_letter, task_id)
  redis.call('ZREM', K.finished, task_id)
end
return #old
