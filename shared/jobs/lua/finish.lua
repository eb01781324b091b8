-- running -> succeeded | failed: every job of a batch that ended, in one call.
-- ARGV: claimant ("" = any: then a queued job may fail too), ttl, then per job: id, status, n,
-- n field/value pairs. Returns {ids written, finished_at}: the run keeps each record it finished
-- (its own copy plus these changes), so nothing reads a record again after it ends.
local claimant, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local finished = tostring(tonumber(t[1]) + tonumber(t[2]) / 1e6)
local done, dequeued = {}, {}
local i = 3
while i <= #ARGV do
  local id, status, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = 'job:' .. id
  local s = redis.call('HMGET', key, 'status', 'worker', 'owner', 'lane')
  local held
  if claimant == '' then
    held = s[1] == 'running' or (s[1] == 'queued' and status == 'failed')
  else
    held = s[2] == claimant
  end
  if held then
    if s[1] == 'queued' then dequeue(id, owner_name(s[3], s[4])) end
    redis.call('HSET', key, 'status', status, 'finished_at', finished, unpack(ARGV, i + 3, i + 2 + 2 * n))
    if status == 'succeeded' then
      redis.call('HDEL', key, 'worker', 'stage', 'error')
    else
      redis.call('HDEL', key, 'worker', 'stage')
    end
    redis.call('EXPIRE', key, ttl)
    table.insert(done, id)
  end
  i = i + 3 + 2 * n
end
if #done > 0 then
  redis.call('ZREM', 'jobs:running', unpack(done))
  redis.call('PUBLISH', 'jobs:changed', table.concat(done, ' '))
end
return {done, finished}
