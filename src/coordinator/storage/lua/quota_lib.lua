-- The principals' quotas (coordinator.auth.quotas), shared by every task script:
-- coordinator.storage.scripts sends this file before task_lib.lua, whose
-- transition() gives back a task's place in its submitter's count of unfinished tasks.
--
-- The counters live in Redis, so every node enforces the same budget; the check and the
-- count are made by submit_task.lua in the step that creates the task, so two nodes cannot
-- both admit a principal's last allowed task. A task submitted without authentication has
-- no submitter and counts for no one.
--
-- K.quota_submit .. principal   hash: the submit token bucket, 'tokens' and 'at_ms' (when
--                               they were counted); gone once the bucket would be full
-- K.quota_unfinished            hash: principal to its number of unfinished tasks

-- Takes one submit from ``principal``'s budget at ``now``: one token of its bucket (refilled
-- at ``rate_per_s`` up to ``burst``; rate 0: no rate limit), and one place among its
-- unfinished tasks (at most ``max_unfinished``; 0: no limit). Returns nil when admitted
-- (both taken), else the refusal {quota, retry_after_ms, detail} and takes nothing:
-- 'max_unfinished' (retry_after_ms 0: nobody knows when a task ends; detail: the count) or
-- 'submit_rate' (retry_after_ms: when the next token is there; detail: tokens left).
-- The unfinished count rises even without a limit, so that it is right when one is set.
local function take_submit_quota(principal, now, rate_per_s, burst, max_unfinished)
  local unfinished = tonumber(redis.call('HGET', K.quota_unfinished, principal) or 0)
  if max_unfinished > 0 and unfinished >= max_unfinished then
    return {'max_unfinished', 0, tostring(unfinished)}
  end
  if rate_per_s > 0 then
    local key = K.quota_submit .. principal
    local bucket = redis.call('HMGET', key, 'tokens', 'at_ms')
    local tokens = tonumber(bucket[1]) or burst
    local at_ms = tonumber(bucket[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - at_ms) * rate_per_s / 1000)
    if tokens < 1 then
      local retry_after_ms = math.max(1, math.ceil((1 - tokens) * 1000 / rate_per_s))
      return {'submit_rate', retry_after_ms, string.format('%.3f', tokens)}
    end
    tokens = tokens - 1
    redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at_ms', now)
    -- Once full again the bucket is what a missing one means: let it go.
    redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate_per_s) + 1)
  end
  redis.call('HINCRBY', K.quota_unfinished, principal, 1)
  return nil
end

-- A task of ``principal`` (its submitted_by; nil or '' for none) reached a final state:
-- one unfinished task less. Called once per task, by transition() (a final state is never
-- left); the count never goes below zero, and a principal at zero has no field.
local function release_unfinished(principal)
  if not principal or principal == '' then
    return
  end
  if redis.call('HINCRBY', K.quota_unfinished, principal, -1) <= 0 then
    redis.call('HDEL', K.quota_unfinished, principal)
  end
end
