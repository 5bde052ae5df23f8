-- Deletes finished tasks with every index entry and their idempotency record (while it
-- names them): those that ended before a bound (the task retention), and, when more than a
-- number of finished tasks are kept, the oldest beyond it, oldest finished first either
-- way. The oldest are the archived ones (K.archived, in the order they finished; a task's
-- updated_at_ms is when it ended), then those not archived yet (K.finished, scored by when
-- they ended): compaction archives them oldest first.
--
-- ARGV[1]      bound in epoch milliseconds
-- ARGV[2]      most tasks to delete in one call
-- ARGV[3]      most finished tasks to keep (0: no bound by count)
-- Returns      the number of tasks deleted
local bound_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])

local FORGET_FIELDS = {'seq', 'agent_id', 'updated_at_ms', 'request_id', 'submitted_by'}

local archived = redis.call('LLEN', K.archived)
local total = archived + redis.call('ZCARD', K.finished)
local beyond_keep = keep > 0 and total - keep or 0

local count = 0
if archived > 0 then
  for _, task_id in ipairs(redis.call('LRANGE', K.archived, 0, limit - 1)) do
    local task = load_task(task_id, FORGET_FIELDS)
    if count >= beyond_keep and task and (tonumber(task.updated_at_ms) or 0) > bound_ms then
      break
    end
    if task then
      forget_request(task_id, task.request_id, task.submitted_by)
    end
    forget_archived(task_id, task)
    count = count + 1
  end
  if count > 0 then
    redis.call('LTRIM', K.archived, count, -1)
  end
  if count == limit or count < archived then
    return count  -- the limit, or a task kept: every later one ended after it
  end
end

local ended_before = redis.call('ZCOUNT', K.finished, '-inf', bound_ms)
local more = math.min(limit - count, math.max(ended_before, beyond_keep - count))
if more <= 0 then
  return count
end
local old = redis.call('ZRANGE', K.finished, 0, more - 1)
for _, task_id in ipairs(old) do
  local task = load_task(task_id, FORGET_FIELDS)
  if task then
    forget_request(task_id, task.request_id, task.submitted_by)
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
return count + #old
