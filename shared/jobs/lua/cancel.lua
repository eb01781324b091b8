-- queued | running -> canceled. ARGV: id, ttl. -1: no such job, 0: already ended, else the canceled
-- record (HGETALL), which the store hands on (webhooks) without reading it again.
-- A run holding the job notices at its next write (its claimant no longer matches) and stops there.
local id = ARGV[1]
local key = 'job:' .. id
local s = redis.call('HMGET', key, 'status', 'owner', 'lane')
if not s[1] then return -1 end
if s[1] == 'queued' then
  dequeue(id, owner_name(s[2], s[3]))
elseif s[1] == 'running' then
  redis.call('ZREM', 'jobs:running', id)
else
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', key, 'status', 'canceled', 'finished_at', tostring(tonumber(t[1]) + tonumber(t[2]) / 1e6))
redis.call('HDEL', key, 'worker', 'stage')
redis.call('EXPIRE', key, tonumber(ARGV[2]))
redis.call('PUBLISH', 'jobs:changed', id)
return redis.call('HGETALL', key)
