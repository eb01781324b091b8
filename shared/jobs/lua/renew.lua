-- running -> running: extend the leases a run still holds. ARGV: claimant, lease seconds, ids.
-- Returns the ids it no longer holds (canceled, finished, or taken back after its lease lapsed).
local t = redis.call('TIME')
local lease = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2])
local lost, leases = {}, {}
for i = 3, #ARGV do
  if redis.call('HGET', 'job:' .. ARGV[i], 'worker') == ARGV[1] then
    table.insert(leases, lease)
    table.insert(leases, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
if #leases > 0 then redis.call('ZADD', 'jobs:running', 'XX', unpack(leases)) end
return lost
