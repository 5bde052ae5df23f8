-- The entries of a ListTasks listing from a bound down, read in one call (read only) from
-- the sorted sets and the archive's indexes (archive_lib.lua) that hold its tasks: a task
-- is in one of them, never both, and one that compaction archives between two calls is
-- found where it is then.
--
-- ARGV[1]      the highest seq to return: a number, or '+inf'
-- ARGV[2]      most entries to return
-- ARGV[3]      n, the number of sorted sets that follow (tasks:all, tasks:state:*,
--              tasks:agent:*, tasks:dead-letter)
-- ARGV[4..n+3] those sorted sets; after them, the archive's indexes (tasks:archive:*)
-- Returns      task_id, seq, task_id, seq, ...: the highest seq first, at most ARGV[2]
local high = ARGV[1]
local most = tonumber(ARGV[2])
local sets = tonumber(ARGV[3])

local found = {}
for i = 4, 3 + sets do
  local entries = redis.call('ZREVRANGEBYSCORE', ARGV[i], high, '-inf', 'WITHSCORES',
    'LIMIT', 0, most)
  for j = 1, #entries, 2 do
    found[#found + 1] = {entries[j + 1], entries[j]}
  end
end
for i = 4 + sets, #ARGV do
  archive_read(ARGV[i], high, most, found)
end
table.sort(found, function(a, b)
  local x, y = tonumber(a[1]), tonumber(b[1])
  if x ~= y then
    return x > y
  end
  return a[2] > b[2]
end)
local out = {}
for i = 1, math.min(most, #found) do
  out[#out + 1] = found[i][2]
  out[#out + 1] = found[i][1]
end
return out
