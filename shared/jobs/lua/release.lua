-- running -> queued: a stopping worker (or one that could not read the job's photo from storage)
-- hands a job back at its old place. This run does not count against the job's attempts.
-- ARGV: id, claimant. 1: handed back, 0: not held by the claimant.
local id, claimant = ARGV[1], ARGV[2]
local key = 'job:' .. id
local s = redis.call('HMGET', key, 'worker', 'attempts', 'owner', 'created_at', 'lane')
if s[1] ~= claimant then return 0 end
redis.call('ZREM', 'jobs:running', id)
-- what the interrupted run published is gone with it
redis.call('HDEL', key, 'worker', 'stage', 'started_at', 'caption', 'story', 'timings')
redis.call('HSET', key, 'status', 'queued', 'attempts', tostring(math.max(0, (tonumber(s[2] or '1') or 1) - 1)))
enqueue(id, owner_name(s[3], s[5]), s[4])
redis.call('PUBLISH', 'jobs:changed', id)
return 1
