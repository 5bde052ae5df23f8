-- Rewrites finished tasks in the compact form of finished_lib.lua, oldest finished first,
-- from where the previous call stopped: background work of the reaper, which calls it in
-- small batches (each call holds Redis for the time its tasks take). While tasks wait in
-- line it does nothing, unless more than ARGV[2] finished tasks wait to be compacted: a
-- burst of work does not pay for it, and memory stays bounded if the burst lasts. The
-- place reached is K.compacted, '{finished score} {task_id}' of the last task compacted;
-- when that task was forgotten meanwhile (and with it every one before it), the next call
-- starts at its score. Only tasks that finished before the current millisecond are
-- compacted: one finishing later cannot sort before the place reached.
--
-- ARGV[1]      most tasks to compact in one call
-- ARGV[2]      most finished tasks left uncompacted while tasks wait in line
-- Returns      the number of finished tasks compacted (fewer than ARGV[1]: none is
--              left for now, or tasks wait in line)
local most = tonumber(ARGV[1])
local most_deferred = tonumber(ARGV[2])

local entries
local place = redis.call('GET', K.compacted)
local score, task_id = nil, nil
if place then
  score, task_id = string.match(place, '^(%S+) (.*)$')
end
-- (those finished since the task at the place reached, less that one: about the number left)
if tasks_waiting() == 1 and
    redis.call('ZCOUNT', K.finished, score or '-inf', '+inf') - (place and 1 or 0) <=
      most_deferred then
  return 0
end
if place then
  local rank = redis.call('ZRANK', K.finished, task_id)
  if rank then
    entries = redis.call('ZRANGE', K.finished, rank + 1, rank + most, 'WITHSCORES')
  else
    entries = redis.call('ZRANGEBYSCORE', K.finished, score, '+inf', 'WITHSCORES', 'LIMIT', 0,
      most)
  end
else
  entries = redis.call('ZRANGE', K.finished, 0, most - 1, 'WITHSCORES')
end
local now = now_ms()
local count = 0
for i = 1, #entries, 2 do
  if tonumber(entries[i + 1]) >= now then
    break
  end
  pack_finished(entries[i])
  count = count + 1
end
if count > 0 then
  redis.call('SET', K.compacted, entries[2 * count] .. ' ' .. entries[2 * count - 1])
end
return count
