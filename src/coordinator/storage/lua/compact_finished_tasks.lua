-- Compacts finished tasks (the form of finished_lib.lua) and archives them (archive_lib.lua),
-- oldest finished first: background work of the reaper, which calls it in small batches
-- (each call holds Redis for the time its tasks take). While tasks wait in line it does
-- nothing, unless more than ARGV[2] finished tasks wait to be archived: a burst of work does
-- not pay for it, and memory stays bounded if the burst lasts. A task archived leaves
-- K.finished, so each call starts at its head; K.archived gets the tasks in the order they
-- finished.
--
-- ARGV[1]      most tasks to archive in one call
-- ARGV[2]      most finished tasks left unarchived while tasks wait in line
-- Returns      the number of finished tasks gone through (fewer than ARGV[1]: none is left
--              for now, or tasks wait in line)
local most = tonumber(ARGV[1])
local most_deferred = tonumber(ARGV[2])

if tasks_waiting() == 1 and redis.call('ZCARD', K.finished) <= most_deferred then
  return 0
end
local finished = redis.call('ZRANGE', K.finished, 0, most - 1)
local tasks, gone = {}, {}
for _, task_id in ipairs(finished) do
  local task = pack_finished(task_id)
  if task then
    tasks[#tasks + 1] = task
  else
    gone[#gone + 1] = task_id  -- its hash was deleted: only its entries are left
  end
end
if #gone > 0 then
  redis.call('ZREM', K.finished, unpack(gone))
  redis.call('ZREM', K.all, unpack(gone))
end
if #tasks > 0 then
  archive_finished(tasks)
end
return #finished
