-- Shared by every task script, after finished_lib.lua: the archive of finished tasks.
--
-- A finished task, once compacted (compact_finished_tasks.lua), leaves the sorted sets it
-- was listed in (K.all, K.state .. state, K.by_agent .. agent_id, K.finished): past 128
-- entries Redis keeps a sorted set as a skiplist, about 150 bytes an entry. The archive
-- keeps them in sorted sets that stay listpacks, about 40 bytes an entry:
-- - an index (K.archive_state .. state, K.archive_agent .. agent_id) is a sorted set of
--   chunks, each chunk's number scored by the lowest seq of its range (one entry per
--   100-odd tasks). A chunk, K.archive_chunk .. number, is a sorted set of at most
--   ARCHIVE_CHUNK_ENTRIES task ids scored by seq, the index's tasks from its score up to
--   the next chunk's: the chunks of an index never overlap, so reading an index by seq
--   reads chunk after chunk.
-- - K.archived lists the archived tasks in the order they finished (the retention's order:
--   compaction takes them oldest finished first), K.archived_states counts them per state.

local ARCHIVE_CHUNK_ENTRIES = 128  -- Redis' default zset-max-listpack-entries

-- The chunk of index ``index`` whose range holds ``seq``: its number and score (nil when
-- ``seq`` is below every chunk, or the index is empty).
local function archive_chunk(index, seq)
  local found = redis.call('ZREVRANGEBYSCORE', index, seq, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return found[1], found[2]
end

-- Where a chunk overfull with ``entries`` is cut: the seq from which its tasks go to a new
-- chunk, so that none holds more than ARCHIVE_CHUNK_ENTRIES (Redis would make it a
-- skiplist for good). ``key``: the chunk, of ``size`` tasks, whose range starts at
-- ``low``; ``entries``: {seq, task_id, seq as a number}, ascending; ``last``: no chunk
-- after it. Where the index holds most seqs (a state's: tasks arrive in about the order
-- they finished, not quite by seq) the cut makes a range of ARCHIVE_CHUNK_ENTRIES seqs,
-- which the latecomers then fill without a cut again; where it holds few (an agent's
-- among many), it goes by count: the last chunk keeps ARCHIVE_CHUNK_ENTRIES (later tasks
-- come after it), another half.
local function archive_cut(key, low, size, entries, last)
  local start = low + ARCHIVE_CHUNK_ENTRIES
  local below = redis.call('ZCOUNT', key, '-inf', '(' .. start)
  for _, entry in ipairs(entries) do
    if entry[3] < start then
      below = below + 1
    end
  end
  if below >= ARCHIVE_CHUNK_ENTRIES / 2 then
    return start
  end
  local keep = ARCHIVE_CHUNK_ENTRIES
  if not last then
    keep = math.floor((size + #entries) / 2)
  end
  local highest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
  if entries[1][3] > highest then  -- all after the chunk's: no need to read it
    if keep < size then
      return tonumber(redis.call('ZRANGE', key, keep, keep, 'WITHSCORES')[2])
    end
    return entries[keep - size + 1][3]
  end
  local stored = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local i, j = 2, 1  -- merge until the entry after the first ``keep``
  for _ = 1, keep do
    if j > #entries or (i <= #stored and tonumber(stored[i]) < entries[j][3]) then
      i = i + 2
    else
      j = j + 1
    end
  end
  if j > #entries or (i <= #stored and tonumber(stored[i]) < entries[j][3]) then
    return tonumber(stored[i])
  end
  return entries[j][3]
end

-- Adds ``entries`` ({seq, task_id, seq as a number}, ascending) to chunk ``chunk`` of
-- index ``index``, whose range starts at ``low``; ``last``: no chunk comes after it. Past
-- ARCHIVE_CHUNK_ENTRIES the chunk is cut (archive_cut): its tasks from the cut on, and the
-- new ones, go to a new chunk (and so on).
local function archive_into(index, chunk, low, entries, last)
  local key = K.archive_chunk .. chunk
  local size = redis.call('ZCARD', key)
  local cut = nil
  if size + #entries > ARCHIVE_CHUNK_ENTRIES then
    cut = archive_cut(key, low, size, entries, last)
  end
  local zadd, rest = {'ZADD', key}, {}
  for _, entry in ipairs(entries) do
    if cut and entry[3] >= cut then
      rest[#rest + 1] = entry
    else
      zadd[#zadd + 1] = entry[1]
      zadd[#zadd + 1] = entry[2]
    end
  end
  if cut then
    local moved = redis.call('ZRANGEBYSCORE', key, cut, '+inf', 'WITHSCORES')
    if #moved > 0 then  -- out first: the chunk never holds more than its limit
      redis.call('ZREMRANGEBYSCORE', key, cut, '+inf')
      for i = 1, #moved, 2 do
        rest[#rest + 1] = {moved[i + 1], moved[i], tonumber(moved[i + 1])}
      end
      table.sort(rest, function(a, b) return a[3] < b[3] end)
    end
  end
  if #zadd > 2 then
    redis.call(unpack(zadd))
  end
  if cut then
    local new = redis.call('INCR', K.archive_chunks)
    redis.call('ZADD', index, cut, new)
    archive_into(index, new, cut, rest, last)
  end
end

-- Adds tasks to index ``index``: ``entries`` is a list of {seq, task_id, seq as a
-- number}, in ascending seq. One ZADD per chunk they fall in; the last chunk, where most
-- go, takes every entry from its start on.
local function archive_add(index, entries)
  local last = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
  local i = 1
  while i <= #entries do
    local seq = entries[i][1]
    local chunk, low, upto = last[1], last[2], nil
    if not chunk or entries[i][3] < tonumber(low) then
      chunk, low = archive_chunk(index, seq)
      if not chunk then  -- below every chunk: the first chunk's range grows down to it
        chunk = redis.call('ZRANGE', index, 0, 0)[1] or redis.call('INCR', K.archive_chunks)
        redis.call('ZADD', index, seq, chunk)
        low = seq
      end
      local after = redis.call('ZRANGEBYSCORE', index, '(' .. low, '+inf', 'WITHSCORES',
        'LIMIT', 0, 1)
      upto = tonumber(after[2])  -- nil: the last chunk
    end
    local into = {}
    while i <= #entries and (not upto or entries[i][3] < upto) do
      into[#into + 1] = entries[i]
      i = i + 1
    end
    archive_into(index, chunk, tonumber(low), into, not upto)
  end
end

-- Takes a task out of index ``index`` (nothing when it is not there). A chunk left empty
-- leaves the index: the chunk before it takes its range.
local function archive_remove(index, seq, task_id)
  local chunk = archive_chunk(index, seq)
  if chunk and redis.call('ZREM', K.archive_chunk .. chunk, task_id) == 1 and
      redis.call('EXISTS', K.archive_chunk .. chunk) == 0 then
    redis.call('ZREM', index, chunk)
  end
end

-- Appends to ``out`` the entries of index ``index`` whose seq is at most ``high`` (a
-- number or '+inf'), highest first, at most ``most``: task_id, seq, task_id, seq, ... as
-- ZREVRANGEBYSCORE WITHSCORES gives them.
local function archive_read(index, high, most, out)
  local bound, taken = high, 0
  while taken < most do
    local chunk = redis.call('ZREVRANGEBYSCORE', index, bound, '-inf', 'WITHSCORES', 'LIMIT',
      0, 1)
    if not chunk[1] then
      return
    end
    local entries = redis.call('ZREVRANGEBYSCORE', K.archive_chunk .. chunk[1], high, '-inf',
      'WITHSCORES', 'LIMIT', 0, most - taken)
    local length = #out
    for i = 1, #entries do
      out[length + i] = entries[i]
    end
    taken = taken + #entries / 2
    bound = '(' .. chunk[2]
  end
end

-- Moves finished tasks from the sorted sets they are listed in to the archive. ``tasks``
-- is a list of {task_id, state, seq, agent_id}, in the order they finished: one ZREM and
-- one archive_add per index they are in.
local function archive_finished(tasks)
  local ids, groups, indexes, counts = {}, {}, {}, {}
  local function group(listed_in, index, seq, task_id)
    if not groups[index] then
      groups[index] = {listed_in = listed_in, entries = {}}
      indexes[#indexes + 1] = index
    end
    table.insert(groups[index].entries, {seq, task_id, tonumber(seq)})
  end
  for _, task in ipairs(tasks) do
    local task_id, state, seq, agent_id = task[1], task[2], task[3], task[4]
    ids[#ids + 1] = task_id
    counts[state] = (counts[state] or 0) + 1
    group(K.state .. state, K.archive_state .. state, seq, task_id)
    if agent_id ~= '' then
      group(K.by_agent .. agent_id, K.archive_agent .. agent_id, seq, task_id)
    end
  end
  redis.call('ZREM', K.all, unpack(ids))
  redis.call('ZREM', K.finished, unpack(ids))
  for _, index in ipairs(indexes) do
    local entries = groups[index].entries
    table.sort(entries, function(a, b) return a[3] < b[3] end)
    local members = {}
    for j, entry in ipairs(entries) do
      members[j] = entry[2]
    end
    redis.call('ZREM', groups[index].listed_in, unpack(members))
    archive_add(index, entries)
  end
  for state, count in pairs(counts) do
    redis.call('HINCRBY', K.archived_states, state, count)
  end
  redis.call('RPUSH', K.archived, unpack(ids))
end

-- Deletes an archived task with its entries in the archive (``task``: its state, seq and
-- agent_id, as load_task reads them; nil for a task whose hash is gone). The caller takes
-- it off K.archived.
local function forget_archived(task_id, task)
  if task then
    archive_remove(K.archive_state .. task.state, task.seq, task_id)
    if task.agent_id ~= '' then
      archive_remove(K.archive_agent .. task.agent_id, task.seq, task_id)
    end
    if redis.call('HINCRBY', K.archived_states, task.state, -1) <= 0 then
      redis.call('HDEL', K.archived_states, task.state)
    end
    redis.call('DEL', K.task .. task_id)
  end
  redis.call('ZREM', K.dead_letter, task_id)
end
