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

-- Where ``sorted`` (a list of {seq, task_id} in ascending seq, none below ``low``: the
-- entries of a chunk whose range starts at ``low``, and more) is cut into chunks of at most
-- ARCHIVE_CHUNK_ENTRIES: a list of {first, last} positions, and the seq where each chunk
-- after the first starts. A chunk's entries never fill a Redis listpack past its limit,
-- which it would not go back to. Where the index holds most seqs (a state's: tasks arrive
-- in about the order they finished, not quite by seq), a chunk is cut to a range of
-- ARCHIVE_CHUNK_ENTRIES seqs, which the latecomers then fill without a cut again; where it
-- holds few (an agent's among many), by count: the last chunk of an index keeps
-- ARCHIVE_CHUNK_ENTRIES (later tasks come after it), another half.
local function archive_slices(sorted, low, last)
  local slices, starts, from = {}, {}, 1
  while #sorted - from + 1 > ARCHIVE_CHUNK_ENTRIES do
    local start = low + ARCHIVE_CHUNK_ENTRIES
    local count = 0
    while from + count <= #sorted and tonumber(sorted[from + count][1]) < start do
      count = count + 1
    end
    if count < ARCHIVE_CHUNK_ENTRIES / 2 then
      count = ARCHIVE_CHUNK_ENTRIES
      if not last then
        count = math.floor((#sorted - from + 1) / 2)
      end
      start = tonumber(sorted[from + count][1])
    end
    slices[#slices + 1] = {from, from + count - 1}
    starts[#starts + 1] = start
    from, low = from + count, start
  end
  slices[#slices + 1] = {from, #sorted}
  return slices, starts
end

-- Adds ``entries`` (a list of {seq, task_id}) to chunk ``chunk`` of index ``index``, whose
-- range starts at ``low``; ``last``: no chunk comes after it. Past ARCHIVE_CHUNK_ENTRIES
-- the chunk is written again as several (archive_slices).
local function archive_into(index, chunk, low, entries, last)
  local key = K.archive_chunk .. chunk
  local size = redis.call('ZCARD', key)
  if size + #entries > ARCHIVE_CHUNK_ENTRIES then
    local stored = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #stored, 2 do
      entries[#entries + 1] = {stored[i + 1], stored[i]}
    end
    table.sort(entries, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
    local slices, starts = archive_slices(entries, tonumber(low), last)
    redis.call('DEL', key)
    for i, slice in ipairs(slices) do
      if i > 1 then
        chunk = redis.call('INCR', K.archive_chunks)
        redis.call('ZADD', index, starts[i - 1], chunk)
      end
      local zadd = {'ZADD', K.archive_chunk .. chunk}
      for j = slice[1], slice[2] do
        zadd[#zadd + 1] = entries[j][1]
        zadd[#zadd + 1] = entries[j][2]
      end
      redis.call(unpack(zadd))
    end
    return
  end
  local zadd = {'ZADD', key}
  for _, entry in ipairs(entries) do
    zadd[#zadd + 1] = entry[1]
    zadd[#zadd + 1] = entry[2]
  end
  redis.call(unpack(zadd))
end

-- Adds tasks to index ``index``: ``entries`` is a list of {seq, task_id}, seq a string of
-- digits, in ascending seq. One ZADD per chunk they fall in.
local function archive_add(index, entries)
  local i = 1
  while i <= #entries do
    local seq = entries[i][1]
    local chunk, low = archive_chunk(index, seq)
    if not chunk then  -- below every chunk: the first chunk's range grows down to it
      chunk = redis.call('ZRANGE', index, 0, 0)[1] or redis.call('INCR', K.archive_chunks)
      redis.call('ZADD', index, seq, chunk)
      low = seq
    end
    local after = redis.call('ZRANGEBYSCORE', index, '(' .. low, '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    local upto = tonumber(after[2])  -- nil: the last chunk
    local into = {}
    while i <= #entries and (not upto or tonumber(entries[i][1]) < upto) do
      into[#into + 1] = entries[i]
      i = i + 1
    end
    archive_into(index, chunk, low, into, not upto)
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
-- number or '+inf'), highest first, at most ``most``: each as {seq, task_id}.
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
    for i = 1, #entries, 2 do
      out[#out + 1] = {entries[i + 1], entries[i]}
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
    table.insert(groups[index].entries, {seq, task_id})
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
    table.sort(entries, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
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
