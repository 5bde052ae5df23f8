-- Deletes tasks that ended before a bound (the task retention) with every index entry.
--
-- ARGV[1]      bound in epoch milliseconds
-- ARGV[2]      most tasks to delete in one call
-- Returns      the number of tasks deleted
local bound_ms = ARGV[1]
local limit = tonumber(ARGV[2])

local old = redis.call('ZRANGEBYSCORE', K.finished, '-inf', bound_ms, 'LIMIT', 0, limit)
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
