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

-- The fields of a task in the compact form, given its hash as a table: every field its
-- hash held before it was packed.
local function unpack_finished(task_id, stored)
  local p = unpacking_tables()
  local packed, created_end, created = joined_pieces(stored, p)
  local text = string.gsub(string.sub(packed, created_end + 1), '[\1-\29\31]', p.by_byte)
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
        fields[name] = (string.gsub(string.sub(packed, start + #head, stop - 1),
          '[\1-\29\31]', u.by_byte))
      else
        fields[name] = u.defaults[name]
      end
    end
  end
  return fields
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
  packed = string.gsub(packed, '"([^"]*)"', p.value_bytes)
  packed = string.gsub(packed, string.sub(created, 1, p.stamp_digits), PACKED_STAMP_BYTE)
  packed = created .. PACKED_END .. packed
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
