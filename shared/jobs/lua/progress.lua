-- running -> running, at the next stage: one stage's results for every job of a batch.
-- ARGV: claimant ("" = any run), stage, then per job: id, n, n field/value pairs.
-- Only the jobs the claimant still holds are written (the others were canceled, or taken back
-- after its lease lapsed); the queue indexes are not touched. Returns the ids it no longer holds.
local claimant, stage = ARGV[1], ARGV[2]
local lost, changed = {}, {}
local i = 3
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local key = 'job:' .. id
  local held
  if claimant == '' then
    held = redis.call('HGET', key, 'status') == 'running'
  else
    held = redis.call('HGET', key, 'worker') == claimant  -- cleared whenever a job leaves running
  end
  if held then
    redis.call('HSET', key, 'stage', stage, unpack(ARGV, i + 2, i + 1 + 2 * n))
    table.insert(changed, id)
  else
    table.insert(lost, id)
  end
  i = i + 2 + 2 * n
end
if #changed > 0 then redis.call('PUBLISH', 'jobs:changed', table.concat(changed, ' ')) end
return lost
