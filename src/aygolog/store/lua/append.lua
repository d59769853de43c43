-- Append a batch of log entries to the stream in one call, all or nothing, and index it.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3] idempotency record (unused when ARGV[3] is 0),
-- KEYS[4] the ingest counter of the current 10-second bucket,
-- KEYS[5] index state (hash: cur = the current block number), KEYS[6] block list (zset: member =
-- zero-padded block number, score = the block's first ms), KEYS[7] a scratch key,
-- KEYS[8] the postings of warning and above (a stream of the same ids, field l = severity)
-- ARGV[1] max entries (0: no bound; trimmed approximately, whole nodes at a time)
-- ARGV[2] max age in ms (0: no bound; trimmed exactly)
-- ARGV[3] idempotency TTL in ms (0: no key)   ARGV[4] instance   ARGV[5] batch digest
-- ARGV[6] entries per index block (0: index off)   ARGV[7] block key prefix
-- ARGV[8] bloom size in bits   ARGV[9] bloom bits of the batch's tokens: 'd' .. the whole filter,
--   or 's' .. (big-endian u32 word, u32 mask) pairs ('D', 'S': the batch has non-ASCII text)
-- ARGV[10] '' (ids made by Redis) or 'x' (each entry starts with its explicit id: benchmarks)
-- ARGV[11..] triples: severity digit, service ('' for none), JSON body (quads with 'x')
-- Returns {1, id...} when stored, {0, record} when the key was seen before
-- (record = digest .. "\n" .. instance .. "\n" .. comma-separated ids).
-- A block (KEYS[7]'s siblings, prefix ARGV[7]) is a hash: f/t first/last id, n entries, b bloom
-- bits, w (present: some text is not ASCII), l<severity> and s:<service> counts,
-- m<minute>\n<severity>\n<service>\n<instance> counts;
-- its bloom filter is the string <prefix>f:<number>, its counts per minute and severity the hash
-- <prefix>v:<number> (<minute>\n<severity>: what a count by level reads). A batch goes whole into one block: a new
-- block starts when the current one holds ARGV[6] entries or more.
local stream = KEYS[1]
local idem_ttl = tonumber(ARGV[3])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    return {0, seen}
  end
end
local instance = ARGV[4]
local block_size = tonumber(ARGV[6])
local explicit = ARGV[10] == 'x'
local ids = {1}
local levels = {}
local services = {}
local groups = {}
local xadd = redis.call
local width = explicit and 4 or 3
for i = 11, #ARGV, width do
  local id, at = '*', i
  if explicit then
    id, at = ARGV[i], i + 1
  end
  local level, service = ARGV[at], ARGV[at + 1]
  ids[#ids + 1] = xadd('XADD', stream, id, 'l', level, 's', service, 'i', instance, 'd', ARGV[at + 2])
  levels[level] = (levels[level] or 0) + 1
  services[service] = (services[service] or 0) + 1
  if block_size > 0 then
    local g = groups[level]
    if not g then
      g = {}
      groups[level] = g
    end
    g[service] = (g[service] or 0) + 1
    if level >= '3' then
      xadd('XADD', KEYS[8], ids[#ids], 'l', level)
    end
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
  if service ~= '' then
    redis.call('HINCRBY', stats, 's:' .. service, count)
  end
end

local function ms_of(id)
  return tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
end

if block_size > 0 then
  local prefix = ARGV[7]
  local cur = tonumber(redis.call('HGET', KEYS[5], 'cur') or '0')
  local bkey = prefix .. cur
  local held = cur > 0 and tonumber(redis.call('HGET', bkey, 'n') or '-1') or -1
  if held < 0 or held >= block_size then
    cur = cur + 1
    bkey = prefix .. cur
    redis.call('HSET', KEYS[5], 'cur', cur)
    redis.call('HSET', bkey, 'f', ids[2], 'b', ARGV[8])
    redis.call('ZADD', KEYS[6], ms_of(ids[2]), string.format('%012d', cur))
  end
  local vkey = prefix .. 'v:' .. cur
  redis.call('HSET', bkey, 't', ids[#ids])
  redis.call('HINCRBY', bkey, 'n', n)
  for level, count in pairs(levels) do
    redis.call('HINCRBY', bkey, 'l' .. level, count)
  end
  for service, count in pairs(services) do
    redis.call('HINCRBY', bkey, 's:' .. service, count)
  end
  local first_minute, last_minute = math.floor(ms_of(ids[2]) / 60000), math.floor(ms_of(ids[#ids]) / 60000)
  if first_minute == last_minute then
    local m = 'm' .. first_minute .. '\n'
    for level, g in pairs(groups) do
      for service, count in pairs(g) do
        redis.call('HINCRBY', bkey, m .. level .. '\n' .. service .. '\n' .. instance, count)
      end
    end
    for level, count in pairs(levels) do
      redis.call('HINCRBY', vkey, first_minute .. '\n' .. level, count)
    end
  else
    -- the batch spans minutes: count each entry in its own (rare; explicit ids)
    local per, by_level = {}, {}
    local j = 2
    for i = 11, #ARGV, width do
      local at = explicit and i + 1 or i
      local minute = math.floor(ms_of(ids[j]) / 60000)
      local k = 'm' .. minute .. '\n' .. ARGV[at] .. '\n' .. ARGV[at + 1] .. '\n' .. instance
      per[k] = (per[k] or 0) + 1
      local v = minute .. '\n' .. ARGV[at]
      by_level[v] = (by_level[v] or 0) + 1
      j = j + 1
    end
    for k, count in pairs(per) do
      redis.call('HINCRBY', bkey, k, count)
    end
    for k, count in pairs(by_level) do
      redis.call('HINCRBY', vkey, k, count)
    end
  end
  local bloom = ARGV[9]
  local fkey = prefix .. 'f:' .. cur
  local kind = string.sub(bloom, 1, 1)
  if kind == 'D' or kind == 'S' then
    redis.call('HSET', bkey, 'w', 1)
  end
  if kind == 'd' or kind == 'D' then
    redis.call('SET', KEYS[7], string.sub(bloom, 2))
    redis.call('BITOP', 'OR', fkey, fkey, KEYS[7])
    redis.call('DEL', KEYS[7])
  elseif #bloom > 1 then
    -- OR each word in: read a few hundred words, write them back (unpack has a stack limit)
    local at = 2
    while at <= #bloom do
      local stop = math.min(#bloom, at + 8 * 500 - 1)
      local gets, words, masks = {}, {}, {}
      for j = at, stop, 8 do
        local w, m = struct.unpack('>I4>I4', string.sub(bloom, j, j + 7))
        words[#words + 1] = '#' .. w
        masks[#masks + 1] = m
        gets[#gets + 1] = 'GET'
        gets[#gets + 1] = 'u32'
        gets[#gets + 1] = '#' .. w
      end
      local old = redis.call('BITFIELD', fkey, unpack(gets))
      local sets = {}
      for j = 1, #words do
        local v = bit.bor(old[j], masks[j])
        if v < 0 then v = v + 4294967296 end
        sets[#sets + 1] = 'SET'
        sets[#sets + 1] = 'u32'
        sets[#sets + 1] = words[j]
        sets[#sets + 1] = v
      end
      redis.call('BITFIELD', fkey, unpack(sets))
      at = stop + 1
    end
  end
end

local trimmed = 0
local max_entries = tonumber(ARGV[1])
if max_entries > 0 then
  trimmed = trimmed + redis.call('XTRIM', stream, 'MAXLEN', '~', max_entries)
end
local max_age = tonumber(ARGV[2])
if max_age > 0 then
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age
  trimmed = trimmed + redis.call('XTRIM', stream, 'MINID', floor)
end
if trimmed > 0 and block_size > 0 then
  -- drop the blocks whose entries are all gone (a few per call: the next appends finish the job)
  local prefix = ARGV[7]
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  redis.call('XTRIM', KEYS[8], 'MINID', first and first[1] or '18446744073709551615-0')
  local first_ms, first_seq = math.huge, 0
  if first then
    local id = first[1]
    local dash = string.find(id, '-', 1, true)
    first_ms, first_seq = tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
  end
  for _ = 1, 16 do
    local oldest = redis.call('ZRANGE', KEYS[6], 0, 0)[1]
    if not oldest then break end
    local number = tonumber(oldest)
    local t = redis.call('HGET', prefix .. number, 't')
    if t then
      local dash = string.find(t, '-', 1, true)
      local ms, seq = tonumber(string.sub(t, 1, dash - 1)), tonumber(string.sub(t, dash + 1))
      if ms > first_ms or (ms == first_ms and seq >= first_seq) then break end
    end
    redis.call('DEL', prefix .. number, prefix .. 'f:' .. number, prefix .. 'v:' .. number)
    redis.call('ZREM', KEYS[6], oldest)
  end
end
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], ARGV[5] .. '\n' .. instance .. '\n' .. table.concat(ids, ',', 2), 'PX', idem_ttl)
end
return ids
