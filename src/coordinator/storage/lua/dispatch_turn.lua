-- Takes turns at dispatching: task_lib.lua's dispatch_turn, which says how. The pass that
-- begins or goes on reads its snapshot in the same step (lua/dispatch_snapshot.lua); this
-- script is for the other actions, 'end' and 'release'.
--
-- ARGV[1]      'begin', 'end', 'again' or 'release'
-- ARGV[2]      this node's token for the lock
-- ARGV[3]      lock time-to-live in milliseconds (a holder that dies frees it by then)
-- Returns      1: run a pass now (the lock is this node's); 0: do nothing more
return dispatch_turn(ARGV[1], ARGV[2], ARGV[3])
