-- Shared by the scripts that put a job in the queue or take it out (cancel, release, reap).
local function enqueue(id, owner, score)
  redis.call('ZADD', 'jobs:queued:' .. owner, score, id)
  redis.call('ZADD', 'jobs:owners', 'NX', 0, owner)  -- a newcomer goes to the front of the line
end
local function dequeue(id, owner)
  redis.call('ZREM', 'jobs:queued:' .. owner, id)
  if redis.call('ZCARD', 'jobs:queued:' .. owner) == 0 then redis.call('ZREM', 'jobs:owners', owner) end
end
-- Whose turn a job takes in the round-robin: its lane (an ownerless job's client network), else its
-- owner, else '-' (records from before lanes).
local function owner_name(o, lane)
  if lane and lane ~= '' then return lane end
  if not o or o == '' then return '-' end
  return o
end
