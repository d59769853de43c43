-- Scan part of the stream for a query's candidates, skipping the index blocks that cannot hold
-- one, and reading at most a bounded number of entries and blocks so that one call never stalls
-- Redis. The caller checks candidates exactly and continues from the returned cursor.
-- KEYS[1] stream   KEYS[2] block list (zset: member = zero-padded block number, score = first ms)
-- KEYS[3] the postings of warning and above (a stream: the same ids, field l = severity digit)
-- ARGV[1] start (an XRANGE bound: '-', '+', 'ms-seq' or '(ms-seq')   ARGV[2] stop bound (inclusive)
-- ARGV[3] 'b' newest first (XREVRANGE) or 'f' oldest first   ARGV[4] how many candidates are wanted
-- ARGV[5] scan budget (entries)   ARGV[6] most entries per XRANGE
-- ARGV[7] byte budget: stop after the candidate whose body brings the bodies returned to this many
-- ARGV[8] allowed severity digits ('' = any)   ARGV[9] services, each framed as "\n"..s.."\n" ('' = any)
-- ARGV[10] 'e' return entries, or 'c' return counts per (bucket, level, service, instance), or
--   'v' counts that only need (bucket, level) (whole blocks read their per-level counters); in
--   'c' and 'v' the filter is exactly the severities and services (no clauses)
-- ARGV[11] count bucket width in ms (0: one bucket)
-- ARGV[12] block budget (0: index off)   ARGV[13] block key prefix   ARGV[14] bloom size in bits
-- ARGV[15] unused (kept for the argument layout)
-- ARGV[16..] per token clause, two arguments: its ASCII tokens, "\n"-separated ('' for none: no
--   substring test), and its bloom probes: per token two (big-endian u32 word, u32 mask) pairs
-- An entry is a candidate when its severity and service are allowed and, for every clause, the
-- lower-cased body holds one of the clause's tokens (or holds a byte >= 128: Unicode case rules
-- are Python's, so such a body is left to the exact check). A block is skipped when its summary
-- has none of the severities or services, or its bloom filter has none of a clause's tokens.
-- Returns {cursor, done, scanned, opened, id, instance, body, ...} ('e') or {cursor, done,
-- scanned, opened, key, n, ...} ('c'); done is 1 when the range is exhausted, cursor is the last
-- id read or skipped ('' when none), scanned how many entries were read, opened how many blocks
-- were scanned rather than skipped.
local stream, blocks = KEYS[1], KEYS[2]
local pos, stop, dir = ARGV[1], ARGV[2], ARGV[3]
local wanted, budget, chunk = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
local levels, services, mode = ARGV[8], ARGV[9], ARGV[10]
local step = tonumber(ARGV[11])
local block_budget, bprefix, bloom_bits = tonumber(ARGV[12]), ARGV[13], ARGV[14]

local back = dir == 'b'
local command = back and 'XREVRANGE' or 'XRANGE'
local find, lower, sub, floor = string.find, string.lower, string.sub, math.floor
local counting = mode == 'c' or mode == 'v'

local clauses = {}
for i = 16, #ARGV, 2 do
  local words = {}
  for t in string.gmatch(ARGV[i], '[^\n]+') do
    words[#words + 1] = t
  end
  local probes = {}
  local p = ARGV[i + 1]
  for j = 1, #p, 8 do
    local w, m = struct.unpack('>I4>I4', sub(p, j, j + 7))
    probes[#probes + 1] = {w, m}
  end
  clauses[#clauses + 1] = {words = (ARGV[i] ~= '') and words or nil, probes = probes}
end
local need_body = false
for _, c in ipairs(clauses) do
  if c.words then need_body = true end
end

-- Ids as comparable {ms, seq}; an exclusive bound is half a sequence step inside.
local HUGE = 2 ^ 62
local function key(s)
  if s == '+' then return {HUGE, HUGE} end
  if s == '-' then return {0, -1} end
  local excl = sub(s, 1, 1) == '('
  if excl then s = sub(s, 2) end
  local dash = find(s, '-', 1, true)
  local ms, seq
  if dash then
    ms, seq = tonumber(sub(s, 1, dash - 1)), tonumber(sub(s, dash + 1))
  else
    ms, seq = tonumber(s), 0
  end
  if excl then seq = seq + ((back and -0.5) or 0.5) end
  return {ms, seq}
end
local function cmp(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] and -1 or 1 end
  if a[2] ~= b[2] then return a[2] < b[2] and -1 or 1 end
  return 0
end
-- "a comes before b in scan order"
local function before(a, b)
  local c = cmp(a, b)
  if back then return c > 0 end
  return c < 0
end

local out = {'', 0, 0, 0}
local opened = 0 -- blocks scanned (not skipped)
local counts = {}
local found, scanned, visited, last, bytes, seen_bytes = 0, 0, 0, '', 0, 0
local CHUNK_BYTES, FIRST_CHUNK = 131072, 32
local unfiltered = levels == '' and services == '' and not need_body and not counting
local full = false -- wanted, bytes or budget reached

-- whether a body with a non-ASCII byte may hide a match (false inside a block whose text is
-- all ASCII: the summary says so)
local check_wide = true

local function candidate(f)
  -- fields are written in this order: l, s, i, d
  if levels ~= '' and not find(levels, f[2], 1, true) then return false end
  if services ~= '' and not find(services, '\n' .. f[4] .. '\n', 1, true) then return false end
  if need_body then
    local body = f[8]
    local low = nil
    local wide = nil
    for _, c in ipairs(clauses) do
      if c.words then
        local ok = false
        -- the body as it is first (most log text is lower case), lower-cased only when needed
        for _, t in ipairs(c.words) do
          if find(body, t, 1, true) then ok = true break end
        end
        if not ok then
          if low == nil then low = lower(body) end
          for _, t in ipairs(c.words) do
            if find(low, t, 1, true) then ok = true break end
          end
        end
        if not ok then
          if not check_wide then return false end
          if wide == nil then wide = find(body, '[\128-\255]') ~= nil end
          if not wide then return false end
        end
      end
    end
  end
  return true
end

-- The ends of a stream, to avoid asking for a range past them: Redis's XREVRANGE from an
-- exclusive bound just below a stream's first entry walks the whole stream (~100 ms at 300,000
-- entries, measured), and may do so for a range that holds nothing.
-- (so a scan first checks that it does not start past the end it walks towards: the first entry
-- newest first, the last oldest first)
local function edge(k)
  local e
  if back then
    e = redis.call('XRANGE', k, '-', '+', 'COUNT', 1)[1]
  else
    e = redis.call('XREVRANGE', k, '+', '-', 'COUNT', 1)[1]
  end
  return e and key(e[1]) or false
end
local function past(from, e)
  if not e then return true end
  local c = cmp(key(from), e)
  if back then return c < 0 end
  return c > 0
end
local stream_edge = edge(stream)

-- Scan entries from `from` to `to` (XRANGE bounds, in scan order). Returns true when the range
-- was read to its end, false when a budget stopped it (then `last` is where it stopped).
local function scan(from, to)
  while true do
    if past(from, stream_edge) then return true end
    local count = math.min(chunk, budget - scanned)
    if scanned == 0 then
      count = math.min(count, FIRST_CHUNK)
    else
      count = math.min(count, math.max(1, floor(CHUNK_BYTES * scanned / seen_bytes)))
    end
    if unfiltered then
      count = math.min(count, wanted - found)
    end
    if count <= 0 then full = true return false end
    local batch = redis.call(command, stream, from, to, 'COUNT', count)
    for _, entry in ipairs(batch) do
      local id, f = entry[1], entry[2]
      scanned = scanned + 1
      seen_bytes = seen_bytes + #f[8]
      last = id
      if candidate(f) then
        if counting then
          local ms = tonumber(sub(id, 1, find(id, '-', 1, true) - 1))
          local bucket = step > 0 and floor(ms / step) * step or 0
          local k = bucket .. '\n' .. f[2] .. '\n' .. f[4] .. '\n' .. f[6]
          counts[k] = (counts[k] or 0) + 1
        else
          out[#out + 1] = id
          out[#out + 1] = f[6]
          out[#out + 1] = f[8]
          found = found + 1
          bytes = bytes + #f[8]
          if found >= wanted or bytes >= max_bytes then full = true return false end
        end
      end
    end
    if #batch < count then return true end
    from = '(' .. last
  end
end

-- Block summaries: number -> {f, t, ok(table of hmget values)}.
local sev_fields, svc_fields = {}, {}
for d in string.gmatch(levels, '%d') do sev_fields[#sev_fields + 1] = 'l' .. d end
if services ~= '' then
  local inner = sub(services, 2, #services - 1)
  for s in string.gmatch(inner .. '\n', '(.-)\n') do svc_fields[#svc_fields + 1] = 's:' .. s end
end

local function summary(n)
  local bkey = bprefix .. n
  local fields = {'f', 't', 'b', 'w'}
  for _, x in ipairs(sev_fields) do fields[#fields + 1] = x end
  for _, x in ipairs(svc_fields) do fields[#fields + 1] = x end
  local v = redis.call('HMGET', bkey, unpack(fields))
  if not v[1] or not v[2] then return nil end
  local may = true
  local i = 5
  if #sev_fields > 0 then
    local any = false
    for _ = 1, #sev_fields do
      if v[i] then any = true end
      i = i + 1
    end
    may = any
  end
  if may and #svc_fields > 0 then
    local any = false
    for _ = 1, #svc_fields do
      if v[i] then any = true end
      i = i + 1
    end
    may = any
  end
  if may and v[3] == bloom_bits then
    local args = {}
    for _, c in ipairs(clauses) do
      for _, p in ipairs(c.probes) do
        args[#args + 1] = 'GET'
        args[#args + 1] = 'u32'
        args[#args + 1] = '#' .. p[1]
      end
    end
    if #args > 0 then
      local words = redis.call('BITFIELD', bprefix .. 'f:' .. n, unpack(args))
      local j = 1
      -- a token may be in the block when both its words hold its bits
      for _, c in ipairs(clauses) do
        if #c.probes > 0 then
          local ok = false
          for t = 1, #c.probes, 2 do
            local p, q = c.probes[t], c.probes[t + 1]
            if bit.band(words[j], p[2]) == bit.tobit(p[2])
                and bit.band(words[j + 1], q[2]) == bit.tobit(q[2]) then
              ok = true
            end
            j = j + 2
          end
          if not ok then may = false end
        end
      end
    end
  end
  return {f = v[1], t = v[2], fk = key(v[1]), tk = key(v[2]), may = may, key = bkey,
          wide = v[4] ~= false}
end

-- The block holding `at` or, failing that, the nearest one before it (in id order).
local function block_at(at)
  local ms = at[1] >= HUGE and '+inf' or tostring(floor(at[1]))
  local found_blocks = redis.call('ZREVRANGEBYSCORE', blocks, ms, '-inf', 'LIMIT', 0, 4)
  for _, m in ipairs(found_blocks) do
    local n = tonumber(m)
    local b = summary(n)
    if b and cmp(b.fk, at) <= 0 then return n, b end
  end
  return nil, nil
end

local function finish(done)
  out[1] = last
  out[2] = done and 1 or 0
  out[3] = scanned
  out[4] = opened
  if counting then
    for k, n in pairs(counts) do
      out[#out + 1] = k
      out[#out + 1] = n
    end
  end
  return out
end

-- Read the postings from `from` to `to`, fetching the entries of the allowed severities: a
-- search for warning and above reads only those entries (errors are ~1% of a stream).
local function postings(from, to)
  local posting_edge = edge(KEYS[3])
  while true do
    if past(from, posting_edge) then return true end
    local count = math.min(chunk, budget - scanned)
    if count <= 0 then return false end
    local batch = redis.call(command, KEYS[3], from, to, 'COUNT', count)
    for _, p in ipairs(batch) do
      local id = p[1]
      scanned = scanned + 1
      last = id
      if find(levels, p[2][2], 1, true) then
        local entry = redis.call('XRANGE', stream, id, id)[1]
        if entry then
          local f = entry[2]
          if candidate(f) then
            out[#out + 1] = id
            out[#out + 1] = f[6]
            out[#out + 1] = f[8]
            found = found + 1
            bytes = bytes + #f[8]
            if found >= wanted or bytes >= max_bytes then return false end
          end
        end
      end
    end
    if #batch < count then return true end
    from = '(' .. last
  end
end

local stopk = key(stop)
if block_budget <= 0 or (levels == '' and services == '' and #clauses == 0 and not counting) then
  return finish(scan(pos, stop))
end
if levels ~= '' and not find(levels, '[012]') and not counting then
  -- postings cover the stream when its first entry is in the oldest block (every writer
  -- indexes; older entries, from before the index, are scanned by the block walk instead)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  local oldest = redis.call('ZRANGE', blocks, 0, 0)[1]
  local f = oldest and redis.call('HGET', bprefix .. tonumber(oldest), 'f')
  if first and f and cmp(key(first[1]), key(f)) >= 0 then
    return finish(postings(pos, stop))
  end
end

local posk = key(pos)
-- counters serve a count when each minute lies in one bucket (buckets are aligned to the epoch)
local by_minute = counting and (step == 0 or step % 60000 == 0)
local firstk = {HUGE, HUGE}
if by_minute then
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if first[1] then firstk = key(first[1][1]) end
end
local n, b = block_at(posk)
if not back and not n then
  local oldest = redis.call('ZRANGE', blocks, 0, 0)
  if oldest[1] then
    n = tonumber(oldest[1])
    b = summary(n)
  end
end
while true do
  if before(stopk, posk) then return finish(true) end
  if not b then return finish(scan(pos, stop)) end
  visited = visited + 1
  if visited > block_budget then return finish(false) end
  local near, far = back and b.tk or b.fk, back and b.fk or b.tk
  local near_s, far_s = back and b.t or b.f, back and b.f or b.t
  -- a gap before the block (entries no block covers): scan it whole
  if before(posk, near) then
    local to = before(stopk, near) and stop or ('(' .. near_s)
    if not scan(pos, to) then return finish(false) end
    if before(stopk, near) then return finish(true) end
    pos, posk = near_s, near
  end
  if not before(far, posk) then
    local to_s = before(stopk, far) and stop or far_s
    if b.may then
      if counting and by_minute and not before(near, posk) and not before(stopk, far)
          and cmp(b.fk, firstk) >= 0 then
        -- the whole block is in range and none of it was trimmed: its counters are exact
        if mode == 'v' then
          local h = redis.call('HGETALL', bprefix .. 'v:' .. n)
          for i = 1, #h, 2 do
            local field = h[i]
            local nl = find(field, '\n', 1, true)
            if levels == '' or find(levels, sub(field, nl + 1), 1, true) then
              local minute = tonumber(sub(field, 1, nl - 1))
              local bucket = step > 0 and floor(minute * 60000 / step) * step or 0
              local k = bucket .. sub(field, nl) .. '\n\n'
              counts[k] = (counts[k] or 0) + tonumber(h[i + 1])
            end
          end
        else
          local h = redis.call('HGETALL', b.key)
          for i = 1, #h, 2 do
            local field = h[i]
            if sub(field, 1, 1) == 'm' then
              local nl = find(field, '\n', 1, true)
              local ok = true
              if levels ~= '' or services ~= '' then
                -- m<minute>\n<severity>\n<service>\n<instance>: the plan's filter, on counters
                local lv, svc = string.match(field, '^[^\n]*\n([^\n]*)\n([^\n]*)\n')
                ok = (levels == '' or find(levels, lv, 1, true) ~= nil)
                  and (services == '' or find(services, '\n' .. svc .. '\n', 1, true) ~= nil)
              end
              if ok then
                local minute = tonumber(sub(field, 2, nl - 1))
                local bucket = step > 0 and floor(minute * 60000 / step) * step or 0
                local k = bucket .. sub(field, nl)
                counts[k] = (counts[k] or 0) + tonumber(h[i + 1])
              end
            end
          end
        end
      else
        opened = opened + 1
        check_wide = b.wide
        local complete = scan(pos, to_s)
        check_wide = true
        if not complete then return finish(false) end
      end
    end
    if before(stopk, far) then return finish(true) end
    last = far_s
  end
  pos, posk = '(' .. far_s, key('(' .. far_s)
  n = back and (n - 1) or (n + 1)
  b = summary(n)
end
