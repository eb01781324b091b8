-- running -> queued (at its old place) | failed (out of attempts): every job whose lease lapsed,
-- its worker having died or vanished from the network. ARGV: max attempts, error for a job out of
-- attempts, ttl, cap. Returns {requeued ids, failed records (HGETALL, each)}: the store hands the
-- failed ones on (webhooks) without reading them again. Only deaths of the job running alone count
-- against MAX_ATTEMPTS: when a batch dies, any of its photos may be the cause; each of its jobs then
-- runs alone (claim.lua), where a death is the job's own.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local requeued, failed = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', 'jobs:running', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))) do
  local key = 'job:' .. id
  local s = redis.call('HMGET', key, 'status', 'lone_deaths', 'owner', 'created_at', 'batch_size', 'lane')
  redis.call('ZREM', 'jobs:running', id)
  if s[1] == 'running' then
    redis.call('HDEL', key, 'worker', 'stage')
    local lone_deaths = tonumber(s[2] or '0') or 0
    if s[5] == '1' then
      lone_deaths = lone_deaths + 1
      redis.call('HSET', key, 'lone_deaths', tostring(lone_deaths))
    end
    if lone_deaths >= tonumber(ARGV[1]) then
      redis.call('HSET', key, 'status', 'failed', 'error', ARGV[2], 'finished_at', tostring(now))
      table.insert(failed, id)
    else
      -- what the lost run published is gone with it
      redis.call('HDEL', key, 'started_at', 'caption', 'story', 'timings')
      redis.call('HSET', key, 'status', 'queued')
      enqueue(id, owner_name(s[3], s[6]), s[4])
      table.insert(requeued, id)
    end
    redis.call('EXPIRE', key, tonumber(ARGV[3]))
  end
end
local records = {}
for _, id in ipairs(failed) do
  table.insert(records, redis.call('HGETALL', 'job:' .. id))
end
if #requeued + #failed > 0 then
  redis.call('PUBLISH', 'jobs:changed', table.concat(requeued, ' ') .. ' ' .. table.concat(failed, ' '))
end
return {requeued, records}
