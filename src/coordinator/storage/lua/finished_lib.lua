-- Shared by every task script, before task_lib.lua: the compact form of a finished task's
-- hash (coordinator/storage/finished_records.py describes it and holds its constants, which
-- coordinator.storage.scripts puts before this file: packing_constants() and
-- unpacking_constants()). compact_finished_tasks.lua packs finished tasks, in the
-- background; every read of a task's fields goes through task_fields, task_field,
-- task_record or load_task, which read both forms.

local PACKED_END = string.char(30)
local PACKED_STAMP_BYTE = string.char(31)

-- The tables of finished_records.py (lua_tables), built on first use.
local packing, unpacking = nil, nil
local function packing_tables()
  packing = packing or packing_constants()
  return packing
end
local function unpacking_tables()
  unpacking = unpacking or unpacking_constants()
  return unpacking
end

-- The packed text of a compact hash (its pieces p1, p2, ... joined), where its creation
-- time ends in it, and that time; makes the time's leading digits the stamp byte's
-- expansion in ``tables``.
local function joined_pieces(stored, tables)
  local pieces = {}
  while stored['p' .. (#pieces + 1)] do
    pieces[#pieces + 1] = stored['p' .. (#pieces + 1)]
  end
  local packed = table.concat(pieces)
  local created_end = string.find(packed, PACKED_END, 1, true)
  local created = string.sub(packed, 1, created_end - 1)
  tables.by_byte[PACKED_STAMP_BYTE] = string.sub(created, 1, tables.stamp_digits)
  return packed, created_end, created
end

-- What byte 0 and each character stand for in a packed text (finished_records.REFERENCED,
-- ESCAPED_TEXT): the pieces of JSON of ``tables``, and the values of the referenced fields
-- as the text holds them (a string with its quotes).
local function escapes_of(packed, created_end, tables)
  local by_char = {}
  for char, text in pairs(tables.escaped) do
    by_char[char] = text
  end
  for code, quoted in pairs(tables.referenced) do
    local start = string.find(packed, PACKED_END .. code, created_end, true)
    if start then
      local value = string.match(packed, '^[^\30]*', start + 2)
      by_char[code] = quoted and ('"' .. value .. '"') or value
    end
  end
  return by_char
end

-- ``text`` (part of a packed text) with byte 0 and its character expanded, then every
-- other byte below 32: as the fields' values were before they were packed.
local function expanded(text, packed, created_end, tables)
  if string.find(text, '%z') then
    text = string.gsub(text, '%z(.)', escapes_of(packed, created_end, tables))
  end
  return (string.gsub(text, '[\1-\29\31]', tables.by_byte))
end

-- The fields of a task in the compact form, given its hash as a table: every field its
-- hash held before it was packed.
local function unpack_finished(task_id, stored)
  local p = unpacking_tables()
  local packed, created_end, created = joined_pieces(stored, p)
  local text = expanded(string.sub(packed, created_end + 1), packed, created_end, p)
  local fields = {}
  for name, value in pairs(p.defaults) do
    fields[name] = value
  end
  for entry in string.gmatch(text, '([^\30]*)\30') do
    local name, value = string.match(entry, '^%*([^=]*)=(.*)$')
    if not name then
      name, value = p.code_names[string.sub(entry, 1, 1)], string.sub(entry, 2)
    end
    fields[name] = value
  end
  for name, value in pairs(stored) do
    if name ~= 'state' and not string.find(name, '^p%d+$') then
      fields[name] = value  -- kept as it was
    end
  end
  fields.created_at_ms = created
  fields.task_id = task_id
  fields.state = stored.state
  return fields
end

-- The named fields of a task in the compact form, given its hash as a table, without
-- unpacking the others: each entry starts with byte 30 and its code, and no value holds
-- byte 30. Returns a table of the fields it holds.
local function unpack_some(task_id, stored, names)
  local u = unpacking_tables()
  local packed, created_end, created = joined_pieces(stored, u)
  local fields = {created_at_ms = created, task_id = task_id, state = stored.state}
  for _, name in ipairs(names) do
    if stored[name] then
      fields[name] = stored[name]  -- kept as it was
    elseif not fields[name] then
      local head = PACKED_END .. (u.field_codes[name] or ('*' .. name .. '='))
      local start = string.find(packed, head, created_end, true)
      if start then
        local stop = string.find(packed, PACKED_END, start + #head, true)
        fields[name] = expanded(string.sub(packed, start + #head, stop - 1), packed,
          created_end, u)
      else
        fields[name] = u.defaults[name]
      end
    end
  end
  return fields
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
  local stored = {}
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
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

-- Every field of a task, whichever its form, as a table; nil when there is no task.
local function task_fields(task_id)
  local flat = redis.call('HGETALL', K.task .. task_id)
  if #flat == 0 then
    return nil
  end
  local stored = {}
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
  if stored.p1 then
    return unpack_finished(task_id, stored)
  end
  return stored
end

-- The named fields of a task in the compact form (a table).
local function compact_task_fields(task_id, names)
  local flat = redis.call('HGETALL', K.task .. task_id)
  local stored = {}
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
  return unpack_some(task_id, stored, names)
end

-- A task's fields as HGETALL gives them (a flat list of field, value), whichever its form;
-- {} when there is no task.
local function task_record(task_id)
  local flat = redis.call('HGETALL', K.task .. task_id)
  for i = 1, #flat, 2 do
    if flat[i] == 'p1' then
      local record = {}
      for name, value in pairs(task_fields(task_id)) do
        record[#record + 1] = name
        record[#record + 1] = value
      end
      return record
    end
  end
  return flat
end

-- One field of a task, whichever its form (nil when there is no task or no such field).
local function task_field(task_id, name)
  local value = redis.call('HGET', K.task .. task_id, name)
  if value or redis.call('HEXISTS', K.task .. task_id, 'p1') == 0 then
    return value
  end
  return compact_task_fields(task_id, {name})[name]
end
