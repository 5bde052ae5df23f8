-- Shared by every task script, before task_lib.lua: the compact form of a finished task's
-- hash (coordinator/storage/finished_records.py describes it and holds the tables PACKED_*,
-- which coordinator.storage.scripts puts before this file). transition() packs a task that
-- reaches a final state; every read of a task's fields goes through task_fields, field or
-- load_task, which read both forms.

local PACKED_CODE_NAMES = {}
for name, code in pairs(PACKED_FIELD_CODES) do
  PACKED_CODE_NAMES[code] = name
end

-- The bytes standing for JSON keys and strings (finished_records.FRAGMENTS), by token.
local PACKED_KEY_BYTES, PACKED_VALUE_BYTES, PACKED_BY_BYTE = {}, {}, {}
for i, token in ipairs(PACKED_KEY_TOKENS) do
  PACKED_KEY_BYTES[token] = string.char(i)
  PACKED_BY_BYTE[string.char(i)] = '"' .. token .. '":'
end
for i, token in ipairs(PACKED_VALUE_TOKENS) do
  local byte = string.char(#PACKED_KEY_TOKENS + i)
  PACKED_VALUE_BYTES[token] = byte
  PACKED_BY_BYTE[byte] = '"' .. token .. '"'
end
local PACKED_STAMP_BYTE = string.char(31)

-- The packed records of the tasks this script packed, as HGETALL gave them before (what a
-- reply that carries the record answers with, without unpacking it again).
local packed_before = {}

local function shorten(value, stamp)
  local first = string.sub(value, 1, 1)
  if first == '{' or first == '[' then
    value = string.gsub(value, '"([%w_]+)":', PACKED_KEY_BYTES)
    value = string.gsub(value, '"([^"]*)"', PACKED_VALUE_BYTES)
  end
  return (string.gsub(value, stamp, PACKED_STAMP_BYTE))
end

local function unshorten(value, stamp)
  PACKED_BY_BYTE[PACKED_STAMP_BYTE] = stamp
  return (string.gsub(value, '[\1-\31]', PACKED_BY_BYTE))
end

-- Rewrites a finished task's hash in the compact form: its state, and the other fields
-- (defaults and task_id left out) packed and cut into listpack-sized pieces p1, p2, ...
local function pack_finished(task_id)
  local key = K.task .. task_id
  local flat = redis.call('HGETALL', key)
  local state, created = nil, ''
  for i = 1, #flat, 2 do
    if flat[i] == 'state' then
      state = flat[i + 1]
    elseif flat[i] == 'created_at_ms' then
      created = flat[i + 1]
    end
  end
  if #created < PACKED_STAMP_DIGITS or string.find(created, '%D') then
    return  -- not a record the scripts wrote: leave it as it is
  end
  local stamp = string.sub(created, 1, PACKED_STAMP_DIGITS)
  local parts = {}
  for i = 1, #flat, 2 do
    local name, value = flat[i], flat[i + 1]
    if name ~= 'task_id' and name ~= 'state' and PACKED_DEFAULTS[name] ~= value then
      local head = PACKED_FIELD_CODES[name] or ('*' .. name .. '=')
      if name ~= 'created_at_ms' then
        if string.find(value, '[%z\1-\31]') then
          head = '!' .. head
        else
          value = shorten(value, stamp)
        end
      end
      parts[#parts + 1] = head .. #value .. ':' .. value
    end
  end
  local packed = table.concat(parts)
  local size = PACKED_PIECE_BYTES
  if #packed > size * PACKED_MAX_PIECES then
    size = #packed  -- too long for a listpack anyway: one piece
  end
  local hset = {'HSET', key, 'state', state}
  local pos = 1
  while pos <= #packed do
    local cut = pos + size
    while cut <= #packed and cut > pos + 1 do  -- never inside a UTF-8 character
      local byte = string.byte(packed, cut)
      if byte < 128 or byte >= 192 then
        break
      end
      cut = cut - 1
    end
    hset[#hset + 1] = 'p' .. ((#hset - 2) / 2)
    hset[#hset + 1] = string.sub(packed, pos, cut - 1)
    pos = cut
  end
  redis.call('DEL', key)
  redis.call(unpack(hset))
  packed_before[task_id] = flat
end

-- The fields of a task in the compact form, given its state and pieces (a table with
-- p1, p2, ...): every field its hash held before it was packed.
local function unpack_finished(task_id, stored)
  local pieces = {}
  while stored['p' .. (#pieces + 1)] do
    pieces[#pieces + 1] = stored['p' .. (#pieces + 1)]
  end
  local packed = table.concat(pieces)
  local entries = {}
  local pos = 1
  while pos <= #packed do
    local mark, name, length, start = string.match(packed, '^(!?)%*([^=]*)=(%d+):()', pos)
    if not mark then
      local code
      mark, code, length, start = string.match(packed, '^(!?)(%a)(%d+):()', pos)
      name = PACKED_CODE_NAMES[code]
    end
    pos = start + tonumber(length)
    entries[#entries + 1] = {name, string.sub(packed, start, pos - 1), mark == '!'}
  end
  local fields = {}
  for name, value in pairs(PACKED_DEFAULTS) do
    fields[name] = value
  end
  for _, entry in ipairs(entries) do
    fields[entry[1]] = entry[2]
  end
  local stamp = string.sub(fields.created_at_ms, 1, PACKED_STAMP_DIGITS)
  for _, entry in ipairs(entries) do
    if entry[1] ~= 'created_at_ms' and not entry[3] then
      fields[entry[1]] = unshorten(entry[2], stamp)
    end
  end
  fields.task_id = task_id
  fields.state = stored.state
  return fields
end

-- Every field of a task, whichever its form, as a table; nil when there is no task.
local function task_fields(task_id)
  local flat = packed_before[task_id] or redis.call('HGETALL', K.task .. task_id)
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

-- A task's fields as HGETALL gives them (a flat list of field, value), whichever its form;
-- {} when there is no task.
local function task_record(task_id)
  if packed_before[task_id] then
    return packed_before[task_id]
  end
  local fields = task_fields(task_id)
  local flat = {}
  for name, value in pairs(fields or {}) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  return flat
end

-- One field of a task, whichever its form (nil when there is no task or no such field).
local function task_field(task_id, name)
  local value = redis.call('HGET', K.task .. task_id, name)
  if value or redis.call('HEXISTS', K.task .. task_id, 'p1') == 0 then
    return value
  end
  return task_fields(task_id)[name]
end
