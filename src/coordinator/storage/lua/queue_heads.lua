-- The first tasks of several requirements-class queues of one priority, with what choosing
-- an agent for each needs, in one call.
--
-- ARGV[1]      priority name
-- ARGV[2]      most tasks per class
-- ARGV[3..]    pairs: requirements class, lower bound of seq ('-inf', or '(N' for after N)
-- Returns      per class, in the order given: {{task_id, seq, requirements, strategy,
--              routing_key, avoid_agent_id}, ...}; requirements is '' for a task deleted
--              meanwhile, avoid_agent_id the agent of the attempt that last ended
--              unsuccessfully ('' if none): its retry prefers another agent
local priority = ARGV[1]
local limit = tonumber(ARGV[2])

local out = {}
for i = 3, #ARGV, 2 do
  out[#out + 1] = class_heads(priority, ARGV[i], ARGV[i + 1], limit)
end
return out
