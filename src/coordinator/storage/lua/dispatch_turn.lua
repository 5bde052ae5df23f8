-- Ends or hands back a node's dispatch turns: task_lib.lua's end_turns and release_turns,
-- which say how. A pass begins or goes on by taking the turns in the step that reads its
-- snapshot (lua/dispatch_snapshot.lua); this script is for the other actions.
--
-- ARGV[1]      'end' (after a pass: keep the turns asked for meanwhile, to pass again,
--              and hand back the others) or 'release' (hand them all back at once)
-- ARGV[2]      this node's token for the locks
-- ARGV[3]      the locks' time-to-live in milliseconds (a holder that dies frees them by
--              then)
-- ARGV[4..]    the partitions whose turn the node holds
-- Returns      {the longest wait of the requests the next pass serves in milliseconds
--               (-1: none), the partitions to pass again...}; nothing to pass after a
--               'release'
local partitions = {}
for i = 4, #ARGV do
  partitions[#partitions + 1] = ARGV[i]
end
if ARGV[1] == 'release' then
  release_turns(partitions, ARGV[2])
  return {-1}
end
local again, waited = end_turns(partitions, ARGV[2], ARGV[3], now_ms())
local reply = {waited}
for _, partition in ipairs(again) do
  reply[#reply + 1] = partition
end
return reply
