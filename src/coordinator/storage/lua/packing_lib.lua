-- Writing the compact form of a finished task's hash (finished_lib.lua reads it;
-- coordinator/storage/finished_records.py describes it and holds its constants): only
-- compact_finished_tasks.lua packs, so only it is sent with this file's helpers, after
-- finished_lib.lua's.

-- The tables of finished_records.py (lua_tables), built on first use.
local packing = nil
local function packing_tables()
  packing = packing or packing_constants()
  return packing
end

-- ``text`` with every ``piece`` in it (plain text, found by memory search: a Lua pattern
-- costs several times more) replaced by ``by``; with ``number``, only where it is a number
-- after a JSON key's byte (1 to 29), before ',' or '}'.
local function replaced(text, piece, by, number)
  local parts, from = {}, 1
  local first, last = string.find(text, piece, 1, true)
  while first do
    local before, after = string.byte(text, first - 1), string.byte(text, last + 1)
    if not number or (before and before <= 29 and (after == 44 or after == 125)) then
      parts[#parts + 1] = string.sub(text, from, first - 1)
      parts[#parts + 1] = by
      from = last + 1
    end
    first, last = string.find(text, piece, last + 1, true)
  end
  if from == 1 then
    return text
  end
  parts[#parts + 1] = string.sub(text, from)
  return table.concat(parts)
end

-- The table of the pass that shortens JSON strings (p.value_bytes), with byte 0 and a
-- field's code for the strings equal to that field's value (finished_records.REFERENCED:
-- the agent's id, the fencing token), when it is plain and long enough to gain.
local function string_references(stored, p)
  local references = nil
  for _, reference in ipairs(p.string_references) do
    local value = stored[reference[1]]
    if value and #value >= p.min_referenced and not string.find(value, '[^%w%.:_%-]') then
      references = references or setmetatable({}, {__index = p.value_bytes})
      references[value] = '\0' .. reference[2]
    end
  end
  return references or p.value_bytes
end

-- A shortened packed text with byte 0 and a character for longer pieces, its strings done
-- (string_references): the times of p.number_references where the JSON repeats them,
-- after a key's byte, then the usual pieces of JSON (finished_records.ESCAPED_TEXT; the
-- starts of transitions, in one pass: p.transition_starts).
local function escaped(packed, p)
  for _, code in ipairs(p.number_references) do
    local start = string.find(packed, PACKED_END .. code, 1, true)
    local value = start and string.match(packed, '^[^\30]*', start + 2)
    if value and #value >= p.min_referenced and not string.find(value, '[^%d\31]') then
      packed = replaced(packed, value, '\0' .. code, true)
    end
  end
  for _, piece in ipairs(p.escaped) do
    packed = replaced(packed, piece[1], piece[2])
  end
  return (string.gsub(packed, '},{\1(.),\2', p.transition_starts))
end

-- Rewrites a finished task's hash in the compact form (nothing for a task already in it:
-- compacted before the archive was): its state, and the other fields (defaults and task_id
-- left out) packed, shortened and cut into listpack-sized pieces p1, p2, ...; a long value,
-- or one with a byte below 32 (only the free-text fields and fields without a code can hold
-- one: finished_records.FREE_TEXT), stays a field of its own. Returns what archiving the
-- task needs, {task_id, state, seq, agent_id}; nil when there is no task.
local function pack_finished(task_id)
  local key = K.task .. task_id
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    return nil
  end
  local stored = fields_of(flat)
  local archived = {task_id, stored.state, stored.seq, stored.agent_id or ''}
  if stored.p1 then
    local fields = unpack_some(task_id, stored, {'seq', 'agent_id'})
    archived[3], archived[4] = fields.seq, fields.agent_id
    return archived
  end
  local created = stored.created_at_ms or ''
  local p = packing_tables()
  if #created < p.stamp_digits or string.find(created, '%D') then
    return archived  -- not a record the scripts wrote: left as it is
  end
  local parts = {}
  local hset = {'HSET', key, 'state', stored.state}
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if name ~= 'task_id' and name ~= 'state' and name ~= 'created_at_ms' and
        p.defaults[name] ~= value then
      local code = p.field_codes[name]
      if #value > p.plain_bytes or
          ((not code or p.free_text[name]) and string.find(value, '[%z\1-\31]')) then
        hset[#hset + 1] = name
        hset[#hset + 1] = value
      else
        parts[#parts + 1] = code or ('*' .. name .. '=')
        parts[#parts + 1] = value
        parts[#parts + 1] = PACKED_END
      end
    end
  end
  local packed = table.concat(parts)
  packed = string.gsub(packed, '"([%w_]+)":', p.key_bytes)
  packed = string.gsub(packed, '"([^"]*)"', string_references(stored, p))
  packed = string.gsub(packed, string.sub(created, 1, p.stamp_digits), PACKED_STAMP_BYTE)
  packed = escaped(created .. PACKED_END .. packed, p)
  local size = p.piece_bytes
  if #packed > size * p.max_pieces then
    size = #packed  -- too long for a listpack anyway: one piece
  end
  local length, pos, piece = #packed, 1, 0
  local names = p.piece_names
  while pos <= length do
    local cut = pos + size
    while cut <= length and cut > pos + 1 do  -- never inside a UTF-8 character
      local byte = string.byte(packed, cut)
      if byte < 128 or byte >= 192 then
        break
      end
      cut = cut - 1
    end
    piece = piece + 1
    hset[#hset + 1] = names[piece] or ('p' .. piece)
    hset[#hset + 1] = string.sub(packed, pos, cut - 1)
    pos = cut
  end
  redis.call('DEL', key)
  redis.call(unpack(hset))
  return archived
end
