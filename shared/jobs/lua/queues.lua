-- Shared by the scripts that put a job in the queue or take it out (cancel, release, reap).
-- A job goes back at its old place: its creation time (the record's created_at, in seconds) in whole
-- microseconds, as store.create scores it (created_score, shared/jobs/store.py).
local function enqueue(id, owner, created_at)
  local score = string.format('%d', math.floor((tonumber(created_at) or 0) * 1e6 + 0.5))
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
