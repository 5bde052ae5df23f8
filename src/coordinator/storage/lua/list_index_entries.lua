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

-- Each source's entries, highest seq first, as task_id, seq, task_id, seq, ...
local sources = {}
for i = 4, #ARGV do
  local entries
  if i <= 3 + sets then
    entries = redis.call('ZREVRANGEBYSCORE', ARGV[i], high, '-inf', 'WITHSCORES', 'LIMIT', 0,
      most)
  else
    entries = {}
    archive_read(ARGV[i], high, most, entries)
  end
  if #entries > 0 then
    sources[#sources + 1] = {entries = entries, at = 1, seq = tonumber(entries[2])}
  end
end
if #sources == 1 then  -- nothing to merge (a final state's listing, once archived)
  return sources[1].entries
end
-- Merged, highest seq first: a task is in one source only, so no two share a seq.
local out = {}
while #out < 2 * most do
  local best = nil
  for _, source in ipairs(sources) do
    if source.seq and (not best or source.seq > best.seq) then
      best = source
    end
  end
  if not best then
    break
  end
  out[#out + 1] = best.entries[best.at]
  out[#out + 1] = best.entries[best.at + 1]
  best.at = best.at + 2
  best.seq = tonumber(best.entries[best.at + 1])
end
return out
