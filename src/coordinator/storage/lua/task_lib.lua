-- Shared by every task script: coordinator.storage.scripts sends what a script uses of this
-- file, after the other helper files (TASK_HELPERS), with K.<name> written in as the key
-- names and prefixes that coordinator/storage/keys.py defines (TASK_SCRIPT_KEYS).
--
-- A task is the hash K.task .. task_id. Its attempts and transitions are JSON lists in the
-- hash; the scripts append to them, so every change of state and its history are one
-- atomic step. Time is Redis's clock (TIME), shared by every node. A finished task, once
-- compacted (compact_finished_tasks.lua), has the form of finished_lib.lua.

local FINAL = {COMPLETED = true, FAILED = true, CANCELLED = true, EXPIRED = true}
local HELD = {ASSIGNED = true, RUNNING = true}
local EWMA_ALPHA = 0.2  -- weight of the newest sample in an agent's moving averages
-- coordinator.task_models.Priority (tests/test_task_scripts.py checks that they agree)
local PRIORITY_NAMES = {'URGENT', 'CRITICAL', 'HIGH', 'NORMAL', 'LOW'}

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Reads the named fields of a task into a table; nil when the task does not exist. A
-- finished task in the compact form (finished_lib.lua) is unpacked.
local function load_task(task_id, fields)
  local values = redis.call('HMGET', K.task .. task_id, 'state', 'p1', unpack(fields))
  if not values[1] then
    return nil
  end
  local task = {id = task_id, state = values[1]}
  local stored = values[2] and compact_task_fields(task_id, fields)
  for i, name in ipairs(fields) do
    if stored then
      task[name] = stored[name]
    else
      task[name] = values[i + 2]
    end
  end
  return task
end

-- The idempotency record of a request_id (keys.task_request): a principal's request_ids
-- are its own.
local function idempotency_key(request_id, submitted_by)
  if submitted_by ~= '' then
    return K.principal_request .. #submitted_by .. ':' .. submitted_by .. ':' .. request_id
  end
  return K.request .. request_id
end

-- Deletes the idempotency record of a task being forgotten, while it is still the task's:
-- a submit of its request_id then creates a task, as it did when the record outlived the
-- task (it found no task), and records are kept no longer than the tasks they name.
local function forget_request(task_id, request_id, submitted_by)
  if request_id and request_id ~= '' then
    local key = idempotency_key(request_id, submitted_by or '')
    if redis.call('GET', key) == task_id then
      redis.call('DEL', key)
    end
  end
end

local function decode_list(raw)
  if not raw or raw == '' or raw == '[]' then
    return {}
  end
  return cjson.decode(raw)
end

-- cjson encodes an empty table as {}; the lists must stay lists.
local function encode_list(list)
  if #list == 0 then
    return '[]'
  end
  return cjson.encode(list)
end

-- A JSON list with one more item, without decoding the list (it grows with every
-- transition; only the new item is encoded).
local function append_to_list(raw, item)
  local encoded = cjson.encode(item)
  if not raw or raw == '' or raw == '[]' then
    return '[' .. encoded .. ']'
  end
  return string.sub(raw, 1, -2) .. ',' .. encoded .. ']'
end

-- Moves the task to a new state: the state indexes, the transitions list, updated_at and
-- the WatchTask channel. ``task`` needs seq, transitions, attempt and agent_id. The listing
-- indexes are scored by seq, which is unique and follows creation order. Every way a task
-- ends (completed, failed for good, cancelled, purged, expired) comes through here, so its
-- submitter's count of unfinished tasks (quota_lib.lua) falls here, once: a final state is
-- never left.
local function transition(task, state, now, reason)
  local key = K.task .. task.id
  if FINAL[state] and not FINAL[task.state] then
    release_unfinished(redis.call('HGET', key, 'submitted_by'))
  end
  if task.state ~= state then  -- a new task is created PENDING: nothing to remove
    redis.call('ZREM', K.state .. task.state, task.id)
  end
  redis.call('ZADD', K.state .. state, tonumber(task.seq), task.id)
  task.transitions = append_to_list(task.transitions, {
    state = state, at_ms = now, attempt = tonumber(task.attempt) or 0,
    agent_id = task.agent_id or '', reason = reason or '',
  })
  redis.call('HSET', key, 'state', state, 'updated_at_ms', now, 'transitions', task.transitions)
  if FINAL[state] then
    redis.call('ZADD', K.finished, now, task.id)
    redis.call('HSET', key, 'lease_expires_at_ms', '')
  end
  task.state = state
  redis.call(K.publish, K.task_channel .. task.id, state)
end

-- Puts a task in line: its priority queue, its requirements-class queue, and the
-- schedule-to-start deadline. ``task`` needs priority, class, seq and schedule_to_start_ms.
-- (The node that ran the script then asks its dispatcher for a pass: no message needed.)
local function enqueue(task, now)
  local queue = K.queue .. task.priority
  redis.call('ZADD', queue, tonumber(task.seq), task.id)
  redis.call('ZADD', queue .. ':' .. task.class, tonumber(task.seq), task.id)
  redis.call('SADD', K.classes .. task.priority, task.class)
  redis.call('ZADD', K.start_deadlines, now + tonumber(task.schedule_to_start_ms), task.id)
  redis.call('HSET', K.task .. task.id, 'queued_at_ms', now)
end

-- Takes a task out of line (queues, class set when emptied, deadline, retry schedule).
local function dequeue(task)
  local queue = K.queue .. task.priority
  local class_queue = queue .. ':' .. task.class
  redis.call('ZREM', queue, task.id)
  redis.call('ZREM', class_queue, task.id)
  if redis.call('EXISTS', class_queue) == 0 then
    redis.call('SREM', K.classes .. task.priority, task.class)
  end
  redis.call('ZREM', K.start_deadlines, task.id)
  redis.call('ZREM', K.scheduled, task.id)
end

-- Sends a message to the node holding an agent's stream, if any node does.
local function notify_agent(agent_id, message)
  local connection = redis.call('HGET', K.connected, agent_id)
  if connection then
    local node_id = string.match(connection, '^(%S+)')
    message.agent_id = agent_id
    redis.call(K.publish, K.node_channel .. node_id, cjson.encode(message))
  end
end

-- Gives back the slot an attempt held. Called exactly once per attempt, by the script that
-- moves the task out of ASSIGNED or RUNNING, so active counts never drift.
local function release_slot(task)
  local agent_id = task.agent_id
  redis.call('ZREM', K.leases, task.id)
  redis.call('SREM', K.agent_tasks .. agent_id, task.id)
  local agent_key = K.agent .. agent_id
  local agent = redis.call('HMGET', agent_key, 'max_concurrency', 'index_keys')
  if agent[1] then  -- a registered agent (its record always has max_concurrency)
    local active = redis.call('HINCRBY', agent_key, 'active_tasks', -1)
    if active < 0 then  -- only reachable if a record was rewritten by hand
      redis.call('HSET', agent_key, 'active_tasks', 0)
    end
    available_slots_changed(agent_id, math.max(active, 0), agent[1], agent[2], false)
  end
  if redis.call('SCARD', K.agent_tasks .. agent_id) == 0 then
    redis.call('SREM', K.holding, agent_id)
    redis.call('ZREM', K.disconnected, agent_id)
  end
end

-- 1 when some task is in line (a requirements class of some priority has one), else 0:
-- after a slot came free, whether a dispatch pass could use it.
local function tasks_waiting()
  for _, priority in ipairs(PRIORITY_NAMES) do
    if redis.call('EXISTS', K.classes .. priority) == 1 then
      return 1
    end
  end
  return 0
end

-- Whether no task waits in line at ``priority`` or a more urgent one: then a task of that
-- priority queued now would be first in line, and may be assigned without queueing.
local function none_waiting_up_to(priority)
  for _, name in ipairs(PRIORITY_NAMES) do
    if redis.call('EXISTS', K.classes .. name) == 1 then
      return false
    end
    if name == priority then
      return true
    end
  end
  return true
end

-- Why an agent cannot take a task now, as a refusal {verdict, detail} ('agent_gone',
-- 'agent_unavailable', 'agent_full'); or nil and what assign needs of the agent:
-- {stream_node = the node holding its stream, max_concurrency, index_keys}. It must be
-- registered, ACTIVE, live, streaming from a live node, with a free slot.
local function agent_refusal(agent_id, now, liveness_timeout_ms)
  local agent = redis.call('HMGET', K.agent .. agent_id, 'status', 'max_concurrency',
    'active_tasks', 'index_keys')
  if not agent[1] then
    return {'agent_gone', 'not registered'}
  end
  if agent[1] ~= 'ACTIVE' then
    return {'agent_unavailable', agent[1]}
  end
  local last_heartbeat = tonumber(redis.call('ZSCORE', K.heartbeats, agent_id) or 0)
  if last_heartbeat < now - liveness_timeout_ms then
    return {'agent_unavailable', 'heartbeat expired'}
  end
  local connection = redis.call('HGET', K.connected, agent_id)
  if not connection then
    return {'agent_unavailable', 'no open stream'}
  end
  local stream_node = string.match(connection, '^(%S+)')
  if redis.call('EXISTS', K.node .. stream_node) == 0 then
    return {'agent_unavailable', 'its node ' .. stream_node .. ' is gone'}
  end
  if tonumber(agent[3] or 0) >= tonumber(agent[2]) then
    return {'agent_full', agent[3]}
  end
  return nil, {stream_node = stream_node, max_concurrency = agent[2], index_keys = agent[4]}
end

-- Gives a PENDING task, already out of line, to an agent that agent_refusal accepted (with
-- ``accepted``, what it read of the agent): the task gets its agent, attempt, fencing token
-- and lease; the agent's active count rises; the node holding the agent's stream is told,
-- or, when that is ``node_id`` itself and ``deliver_here``, the message comes back in the
-- reply. ``task`` needs the fields of
-- TASK_FIELDS. Returns assign_task.lua's reply for an assignment ({'ok', ...}).
local function assign(task, agent_id, token_nonce, node_id, accepted, deliver_here, now)
  local task_id = task.id
  local previous_agent = task.agent_id
  local attempt = tonumber(task.attempt) + 1
  local token = attempt .. ':' .. token_nonce
  local lease_ms = now + tonumber(task.start_to_close_ms)
  local attempts = append_to_list(task.attempts, {
    attempt = attempt, agent_id = agent_id, node_id = node_id, assigned_at_ms = now,
    token = token,
  })
  task.attempt = attempt
  task.agent_id = agent_id
  redis.call('HSET', K.task .. task_id,
    'attempt', attempt, 'agent_id', agent_id, 'fencing_token', token,
    'lease_expires_at_ms', lease_ms, 'assigned_at_ms', now, 'attempts', attempts)
  transition(task, 'ASSIGNED', now, 'assigned by node ' .. node_id)

  redis.call('ZADD', K.leases, lease_ms, task_id)
  redis.call('SADD', K.agent_tasks .. agent_id, task_id)
  redis.call('SADD', K.holding, agent_id)
  available_slots_changed(agent_id, redis.call('HINCRBY', K.agent .. agent_id, 'active_tasks', 1),
    accepted.max_concurrency, accepted.index_keys, true)
  if previous_agent ~= '' and previous_agent ~= agent_id then
    redis.call('ZREM', K.by_agent .. previous_agent, task_id)
  end
  redis.call('ZADD', K.by_agent .. agent_id, tonumber(task.seq), task_id)

  redis.call('HINCRBY', K.stats, 'tasks_distributed', 1)
  redis.call('HINCRBY', K.assignments_per_agent, agent_id, 1)
  local latency_ms = nil
  if attempt == 1 then
    latency_ms = now - tonumber(task.created_at_ms)
    redis.call('HINCRBY', K.stats, 'submit_to_assignment_ms_total', latency_ms)
    redis.call('HINCRBY', K.stats, 'submit_to_assignment_count', 1)
    redis.call('LPUSH', K.assign_latencies, latency_ms)
    redis.call('LTRIM', K.assign_latencies, 0, 9999)
  end
  -- The whole assignment rides on the message, so the node holding the stream sends it
  -- without reading it back (task_data stays a JSON string: cjson would not keep it exact).
  local payload = redis.call('HMGET', K.task .. task_id, 'task_type', 'task_data')
  local message = {
    kind = 'assign', task_id = task_id, attempt = attempt, fencing_token = token,
    task_type = payload[1] or '', task_data = payload[2] or '{}', priority = task.priority,
    assigned_at_ms = now, lease_expires_at_ms = lease_ms,
    start_to_close_ms = tonumber(task.start_to_close_ms),
  }
  if deliver_here and accepted.stream_node == node_id then
    message.agent_id = agent_id
    return {'ok', attempt, latency_ms or -1, cjson.encode(message)}
  end
  notify_agent(agent_id, message)
  if latency_ms then
    return {'ok', attempt, latency_ms}
  end
  return {'ok', attempt}
end

-- Folds one attempt's outcome into the agent's moving averages (predictive and
-- least_response_time strategies, health score). ``duration_ms`` is nil for failures.
local function record_outcome(agent_id, succeeded, duration_ms)
  local agent_key = K.agent .. agent_id
  if redis.call('EXISTS', agent_key) == 0 then
    return
  end
  local old = redis.call('HMGET', agent_key, 'recent_success', 'avg_duration_ms')
  local success = tonumber(old[1]) or 1
  local sample = succeeded and 1 or 0
  success = success + EWMA_ALPHA * (sample - success)
  redis.call('HSET', agent_key, 'recent_success', string.format('%.6f', success))
  if duration_ms then
    local avg = tonumber(old[2])
    if avg then
      avg = avg + EWMA_ALPHA * (duration_ms - avg)
    else
      avg = duration_ms
    end
    redis.call('HSET', agent_key, 'avg_duration_ms', string.format('%.3f', avg))
  end
end

-- Ends the current attempt in the attempts list. ``fields`` adds outcome, error, reported.
local function end_attempt(task, now, outcome, err, reported)
  local attempts = decode_list(task.attempts)
  local current = attempts[#attempts]
  if current then
    current.ended_at_ms = now
    current.outcome = outcome
    if err then
      current.error = err
    end
    if reported then
      current.reported = reported
    end
  end
  task.attempts = encode_list(attempts)
  redis.call('HSET', K.task .. task.id, 'attempts', task.attempts)
  return current
end

-- After a failed attempt: back in line after a backoff while attempts remain and the error
-- is retryable, else FAILED and dead-lettered. ``task`` needs the fields of TASK_FIELDS.
-- A task back in line records the agent of the attempt that just ended (expired, lost or
-- failed) as 'avoid_agent_id': the dispatcher gives the retry to another agent when another
-- can take it (class_heads returns the field).
local function retry_or_fail(task, now, err, reason)
  local key = K.task .. task.id
  redis.call('HSET', key, 'error', cjson.encode(err))
  local attempt = tonumber(task.attempt)
  if err.retryable and attempt < tonumber(task.max_attempts) then
    local retry = cjson.decode(task.retry)
    local backoff = retry.initial_ms * retry.multiplier ^ (attempt - 1)
    backoff = math.floor(math.min(backoff, retry.max_ms))
    redis.call('HSET', key, 'avoid_agent_id', task.agent_id or '')
    redis.call('ZADD', K.scheduled, now + backoff, task.id)
    transition(task, 'PENDING', now, reason .. '; retry in ' .. backoff .. ' ms')
    return 'PENDING'
  end
  redis.call('ZADD', K.dead_letter, tonumber(task.seq), task.id)
  redis.call('HSET', key, 'dead_lettered', 1)
  redis.call('HINCRBY', K.stats, 'tasks_failed', 1)
  transition(task, 'FAILED', now, reason)
  return 'FAILED'
end

-- The fields most scripts read.
local TASK_FIELDS = {
  'attempt', 'agent_id', 'fencing_token', 'max_attempts', 'retry', 'priority', 'class',
  'seq', 'created_at_ms', 'schedule_to_start_ms', 'start_to_close_ms', 'attempts',
  'transitions', 'lease_expires_at_ms',
}

-- The first tasks of one requirements-class queue after the seq bound ``after`` ('-inf', or
-- '(N' for after N), at most ``limit``, each as {task_id, seq, requirements, strategy,
-- routing_key, avoid_agent_id}; requirements is '' for a task deleted meanwhile, and
-- avoid_agent_id the agent whose attempt of the task last ended unsuccessfully ('' for a
-- first attempt; see retry_or_fail). For the dispatcher.
local function class_heads(priority, class, after, limit)
  local entries = redis.call('ZRANGEBYSCORE', K.queue .. priority .. ':' .. class, after,
    '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
  local heads = {}
  for j = 1, #entries, 2 do
    local task = redis.call('HMGET', K.task .. entries[j], 'requirements', 'strategy',
      'routing_key', 'avoid_agent_id')
    heads[#heads + 1] = {entries[j], entries[j + 1], task[1] or '', task[2] or '',
      task[3] or '', task[4] or ''}
  end
  return heads
end

-- Dispatch turns, one per partition. A partition is the tasks that one node queued: their
-- requirements classes are named '{class}@{node_id}' (a class without '@', queued by a node
-- from before partitions, is in the partition ''). One node at a time passes over a
-- partition, and no request for a pass is lost: a node that wants a pass over a partition
-- another node holds leaves that partition's 'wanted' flag (the time it was first set), and
-- the holder, after its pass, sees the flag and passes again. So nodes that queue their own
-- tasks pass at the same time, each over its own, and none waits for another's turn unless
-- it wants a pass over that other's tasks (see docs/design.md, what ordering holds where).

-- The partition of a queued requirements class: the node_id after its '@', or ''.
local function class_partition(class)
  return string.match(class, '@(.+)$') or ''
end

-- The lock and the 'wanted' flag of one partition's turn (the partition '' keeps the names
-- of the single turn there was before partitions).
local function turn_keys(partition)
  if partition == '' then
    return K.dispatch_lock, K.dispatch_wanted
  end
  return K.dispatch_lock .. ':' .. partition, K.dispatch_wanted .. ':' .. partition
end

-- Clears a partition's 'wanted' flag: the pass about to run serves every request so far.
-- Returns whether the flag was set, and how long the oldest request waited for this pass
-- in milliseconds (-1 for a flag without a time, left by a node from before partitions),
-- which the cluster's statistics count.
local function serve_requests(wanted, now)
  local flag = redis.call('GET', wanted)
  if not flag then
    return false, -1
  end
  redis.call('DEL', wanted)
  local since = tonumber(flag)
  if not since or since < 1e12 then
    return true, -1
  end
  local waited = math.max(0, now - since)
  redis.call('HINCRBY', K.stats, 'dispatch_turn_waits', 1)
  redis.call('HINCRBY', K.stats, 'dispatch_turn_wait_ms_total', waited)
  return true, waited
end

-- Takes the turn of each of ``partitions`` that is free or ``token``'s already (renewing
-- its lock for ``ttl_ms``), and leaves the 'wanted' flag of each that another node holds.
-- While tasks wait in its ``home`` partition (the node's own), a node takes no other live
-- node's partition: that node's own passes serve it, and neither waits for the other's
-- turn. Returns the partitions ``token`` holds now, the longest wait of the requests their
-- passes serve (-1: none), and the nodes holding the other turns ({node_id = true}, from
-- their tokens, '{node_id}/{random}'): passing now, they fill their own agents' slots.
local function take_turns(partitions, token, ttl_ms, now, home)
  local home_waiting = false
  for _, partition in ipairs(partitions) do
    home_waiting = home_waiting or partition == home
  end
  local held = {}
  local waited = -1
  local passing = {}
  for _, partition in ipairs(partitions) do
    local lock, wanted = turn_keys(partition)
    local holder = redis.call('GET', lock)
    if holder and holder ~= token then
      passing[string.match(holder, '^(.-)/') or ''] = true
    end
    if home_waiting and partition ~= home and partition ~= ''
        and redis.call('EXISTS', K.node .. partition) == 1 then
      -- another live node's tasks, while this node has its own: left to that node
    elseif not holder or holder == token then
      redis.call('SET', lock, token, 'PX', ttl_ms)
      local _, served = serve_requests(wanted, now)
      waited = math.max(waited, served)
      held[#held + 1] = partition
    else
      redis.call('SET', wanted, now, 'NX')  -- the holder passes again when it sees this
    end
  end
  return held, waited, passing
end

-- After a pass over ``partitions`` by ``token``: keeps the turn of each whose 'wanted' flag
-- was set meanwhile (to pass again) and hands back the others. A partition whose lock
-- expired mid-pass and went to another node is left alone (that node sees the flag).
-- Returns the partitions to pass again, and the longest wait of their requests (-1: none).
local function end_turns(partitions, token, ttl_ms, now)
  local again = {}
  local waited = -1
  for _, partition in ipairs(partitions) do
    local lock, wanted = turn_keys(partition)
    if redis.call('GET', lock) == token then
      local asked, served = serve_requests(wanted, now)
      if asked then
        redis.call('PEXPIRE', lock, ttl_ms)
        again[#again + 1] = partition
        waited = math.max(waited, served)
      else
        redis.call('DEL', lock)
      end
    end
  end
  return again, waited
end

-- Hands back the turn of each of ``partitions`` that ``token`` holds, whatever was asked
-- meanwhile (the flags stay for the next node).
local function release_turns(partitions, token)
  for _, partition in ipairs(partitions) do
    local lock = turn_keys(partition)
    if redis.call('GET', lock) == token then
      redis.call('DEL', lock)
    end
  end
end
