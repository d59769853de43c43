-- Append a batch of log entries to the stream in one call, all or nothing.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3] idempotency record (unused when ARGV[3] is 0),
-- KEYS[4] the ingest counter of the current 10-second bucket
-- ARGV[1] max entries (0: no bound; trimmed approximately, whole nodes at a time)
-- ARGV[2] max age in ms (0: no bound; trimmed exactly)
-- ARGV[3] idempotency TTL in ms (0: no key)   ARGV[4] instance   ARGV[5] batch digest
-- ARGV[6..] triples: severity digit, service ('' for none), JSON body
-- Returns {1, id...} when stored, {0, record} when the key was seen before
-- (record = digest .. "\n" .. instance .. "\n" .. comma-separated ids).
local stream = KEYS[1]
local idem_ttl = tonumber(ARGV[3])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    return {0, seen}
  end
end
local instance = ARGV[4]
local ids = {1}
local levels = {}
local services = {}
local xadd = redis.call
for i = 6, #ARGV, 3 do
  local level, service = ARGV[i], ARGV[i + 1]
  ids[#ids + 1] = xadd('XADD', stream, '*', 'l', level, 's', service, 'i', instance, 'd', ARGV[i + 2])
  levels[level] = (levels[level] or 0) + 1
  if service ~= '' then
    services[service] = (services[service] or 0) + 1
  end
end
local n = #ids - 1
local stats = KEYS[2]
redis.call('HINCRBY', stats, 'total', n)
redis.call('INCRBY', KEYS[4], n)
redis.call('EXPIRE', KEYS[4], 120)
redis.call('HINCRBY', stats, 'i:' .. instance, n)
for level, count in pairs(levels) do
  redis.call('HINCRBY', stats, 'l:' .. level, count)
end
for service, count in pairs(services) do
  redis.call('HINCRBY', stats, 's:' .. service, count)
end
local max_entries = tonumber(ARGV[1])
if max_entries > 0 then
  redis.call('XTRIM', stream, 'MAXLEN', '~', max_entries)
end
local max_age = tonumber(ARGV[2])
if max_age > 0 then
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age
  redis.call('XTRIM', stream, 'MINID', floor)
end
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], ARGV[5] .. '\n' .. instance .. '\n' .. table.concat(ids, ',', 2), 'PX', idem_ttl)
end
return ids
