-- queued -> running: a batch for one run (the claimant); queued -> failed: a job met past its deadline.
-- ARGV: claimant, lease seconds, limit, first id ("" = none), the error of an expired job, the
-- broker's list of waiting wake-ups ("" = leave it alone).
-- Returns {claimed ids, expired ids}. A job whose `deadline_at` passed before any run took it never
-- runs: it fails here, as it is met, and takes no place in the batch.
--
-- A wake-up names a job; when that job is no longer queued, another run took it with its batch and
-- the wake-up is spent (every queued job has a wake-up of its own, or the reaper sends one). Else
-- it goes first, then the batch is filled round-robin across owners, each owner's oldest first, an
-- equal share per owner per round: one owner's backlog delays another owner's job by about one
-- batch at most. Cost: O(batch), whatever the number of owners waiting (at most `limit` are read).
-- A job that ran before (its worker died) runs alone, so a photo that kills workers cannot take
-- batch-mates down with it.
local claimant, limit, first = ARGV[1], tonumber(ARGV[3]), ARGV[4]
if first ~= '' and redis.call('HGET', 'job:' .. first, 'status') ~= 'queued' then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = now + tonumber(ARGV[2])

local picked, attempts_of, runs_of, solo, expired = {}, {}, {}, false, {}
local leaving, owners_touched, claimed_from = {}, {}, {}  -- per owner: ids leaving its queue

local function leave(o, id)
  if not leaving[o] then
    leaving[o] = {}
    table.insert(owners_touched, o)
  end
  table.insert(leaving[o], id)
end

-- 'take', 'gone' (expired or no longer queued: only its queue entry is left) or 'later' (a rerun)
local function consider(id, o)
  local s = redis.call('HMGET', 'job:' .. id, 'status', 'attempts', 'owner', 'runs', 'lane', 'deadline_at')
  o = o or owner_name(s[3], s[5])
  if s[1] ~= 'queued' then
    leave(o, id)
    return 'gone'
  end
  if s[6] and tonumber(s[6]) and tonumber(s[6]) <= now then
    leave(o, id)
    redis.call('HSET', 'job:' .. id, 'status', 'failed', 'error', ARGV[5], 'finished_at', tostring(now))
    redis.call('HDEL', 'job:' .. id, 'stage')
    table.insert(expired, id)
    return 'gone'
  end
  local attempts = tonumber(s[2] or '0') or 0
  if attempts > 0 then
    if #picked > 0 then return 'later' end
    solo = true
  end
  leave(o, id)
  claimed_from[o] = true
  table.insert(picked, id)
  table.insert(attempts_of, attempts)
  table.insert(runs_of, tonumber(s[4] or '0') or 0)
  return 'take'
end

if first ~= '' then consider(first, nil) end
local owners = redis.call('ZRANGE', 'jobs:owners', 0, limit - 1)
local offset, done = {}, {}  -- per owner: entries read so far; owners with nothing more for this batch
local progress = true
while progress and not solo and #picked < limit do
  progress = false
  local live = 0
  for _, o in ipairs(owners) do
    if not done[o] then live = live + 1 end
  end
  local share = math.max(1, math.floor((limit - #picked) / math.max(live, 1)))
  for _, o in ipairs(owners) do
    if solo or #picked >= limit then break end
    if not done[o] then
      local from = offset[o] or 0
      local ids = redis.call('ZRANGE', 'jobs:queued:' .. o, from, from + share - 1)
      if #ids == 0 then done[o] = true end
      for _, id in ipairs(ids) do
        progress = true
        -- a rerun ('later') stays queued for a batch of its own; the owner's other jobs go on
        if id ~= first then consider(id, o) end
        offset[o] = (offset[o] or 0) + 1
        if solo or #picked >= limit then break end
      end
    end
  end
end

-- Owners listed with nothing queued left the line long ago: drop them.
for _, o in ipairs(owners) do
  if done[o] and not offset[o] and not leaving[o] then
    if redis.call('ZCARD', 'jobs:queued:' .. o) == 0 then redis.call('ZREM', 'jobs:owners', o) end
  end
end
if #owners_touched == 0 then return {} end

local started = tostring(now)
for i, id in ipairs(picked) do
  local key = 'job:' .. id
  redis.call('HSET', key, 'status', 'running', 'stage', 'caption', 'worker', claimant, 'started_at', started,
             'attempts', tostring(attempts_of[i] + 1), 'runs', tostring(runs_of[i] + 1),
             'batch_size', tostring(#picked))
  if attempts_of[i] > 0 then redis.call('HDEL', key, 'error') end
end
local turn = nil
for k, o in ipairs(owners_touched) do
  local ids = leaving[o]
  redis.call('ZREM', 'jobs:queued:' .. o, unpack(ids))
  if redis.call('ZCARD', 'jobs:queued:' .. o) == 0 then
    redis.call('ZREM', 'jobs:owners', o)
  elseif claimed_from[o] then  -- to the back of the line, in the order this batch served them
    turn = turn or redis.call('INCR', 'jobs:turn') * 1024
    redis.call('ZADD', 'jobs:owners', 'XX', turn + k, o)
  end
end
if #expired > 0 then redis.call('PUBLISH', 'jobs:changed', table.concat(expired, ' ')) end
if #picked == 0 then return {{}, expired} end
local leases = {}
for _, id in ipairs(picked) do
  table.insert(leases, lease)
  table.insert(leases, id)
end
redis.call('ZADD', 'jobs:running', unpack(leases))
redis.call('PUBLISH', 'jobs:changed', table.concat(picked, ' '))

-- The batch's own wake-ups are spent now: each would cost a worker a delivery (and kombu its
-- bookkeeping) only to read that its job is no longer queued. Drop those still waiting. Kombu hands
-- its list out from the tail, oldest first, and a batch takes the oldest jobs, so they lie among the
-- last 2 x limit messages; one further in, or naming a job outside the batch (a rerun's), stays, and so
-- does one whose task arguments (Celery's `argsrepr` header) read differently.
local wakeups = ARGV[6]
if wakeups and wakeups ~= '' then
  local batch = {}
  for _, id in ipairs(picked) do batch[id] = true end
  local label = '"argsrepr": "[\''
  local window = redis.call('LRANGE', wakeups, -2 * limit, -1)
  local tail = 0  -- the batch's wake-ups at the very tail go in one LTRIM; one further in, by value
  for i = #window, 1, -1 do
    local message = window[i]
    local at = string.find(message, label, 1, true)  -- a plain search: a pattern would try every byte
    local id = at and string.match(message, "^([%w_%-]+)'%]\"", at + #label)
    if id and batch[id] then
      if tail == #window - i then tail = tail + 1 else redis.call('LREM', wakeups, -1, message) end
    end
  end
  if tail > 0 then redis.call('LTRIM', wakeups, 0, -tail - 1) end
end
return {picked, expired}
