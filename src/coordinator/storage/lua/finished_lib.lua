-- Shared by every task script, before task_lib.lua: reading the compact form of a finished
-- task's hash (coordinator/storage/finished_records.py describes it and holds its
-- constants, which coordinator.storage.scripts puts before this file: packing_constants()
-- and unpacking_constants()). compact_finished_tasks.lua packs finished tasks, in the
-- background (with packing_lib.lua); every read of a task's fields goes through
-- task_fields, task_field, task_record or load_task, which read both forms.

local PACKED_END = string.char(30)
local PACKED_STAMP_BYTE = string.char(31)

-- The tables of finished_records.py (lua_tables), built on first use.
local unpacking = nil
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

-- A hash as HGETALL gives it (a flat list of field, value), as a table.
local function fields_of(flat)
  local stored = {}
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
  return stored
end

-- Every field of a task, whichever its form, as a table; nil when there is no task.
local function task_fields(task_id)
  local flat = redis.call('HGETALL', K.task .. task_id)
  if #flat == 0 then
    return nil
  end
  local stored = fields_of(flat)
  if stored.p1 then
    return unpack_finished(task_id, stored)
  end
  return stored
end

-- The named fields of a task in the compact form (a table).
local function compact_task_fields(task_id, names)
  return unpack_some(task_id, fields_of(redis.call('HGETALL', K.task .. task_id)), names)
end

-- A task's fields as HGETALL gives them (a flat list of field, value), whichever its form;
-- {} when there is no task.
local function task_record(task_id)
  local flat = redis.call('HGETALL', K.task .. task_id)
  for i = 1, #flat, 2 do
    if flat[i] == 'p1' then  -- the compact form: unpacked from what was read
      local record = {}
      for name, value in pairs(unpack_finished(task_id, fields_of(flat))) do
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
